package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"syscall"

	"banger/rpc"
)

// A full state directory is the user's to fix, and should say so: every
// error of a method or an operation that ran out of space (ENOSPC or
// EDQUOT in its chain, or the words of the tools and of SQLite that
// report it) is answered as unavailable, naming the directory and what
// frees it. What ran out is undone like any other failure: files are
// written aside and renamed into place, and the database's transactions
// roll back, so no record is lost and nothing half-written is left.

// noSpace says whether err is a file system out of space or quota.
func noSpace(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	msg := strings.ToLower(err.Error())
	for _, words := range []string{"no space left on device", "disk quota exceeded", "database or disk is full"} {
		if strings.Contains(msg, words) {
			return true
		}
	}
	return false
}

// fullStateError is err said as a full state directory, or err itself.
func fullStateError(stateDir string, err error) error {
	if !noSpace(err) || rpc.CodeOf(err) == rpc.CodeCanceled {
		return err
	}
	return rpc.Errorf(rpc.CodeUnavailable, "the state directory %s is out of space (%s); free some (`banger vm prune`, `banger image delete`, or room on its file system) and try again", stateDir, rpc.MessageOf(err))
}

// sayFull makes every handler of ms answer a full state directory as one.
func sayFull(stateDir string, ms rpc.Methods) rpc.Methods {
	for name, h := range ms {
		ms[name] = func(ctx context.Context, params json.RawMessage) (any, error) {
			res, err := h(ctx, params)
			return res, fullStateError(stateDir, err)
		}
	}
	return ms
}
