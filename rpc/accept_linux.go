package rpc

import (
	"errors"
	"syscall"
)

// isResourceShortage reports an accept error worth retrying after a pause:
// the process or the system is out of descriptors or memory for now.
func isResourceShortage(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}
