// Package errdefs is the kinds of failure banger's storage and domain
// packages report (a VM not found, a name taken, a tool missing), as
// sentinels to test with errors.Is, like containerd's errdefs. The rpc
// package maps each kind to its wire code, once (rpc.CodeOf): nothing
// below the RPC boundary imports rpc for its codes.
package errdefs

import "fmt"

// Kind is a kind of failure; its text is the wire code rpc answers it
// with.
type Kind string

func (k Kind) Error() string { return string(k) }

// The kinds.
const (
	ErrInvalid       Kind = "invalid_params"   // the request is wrong, and says how
	ErrNotFound      Kind = "not_found"        // what it names is not there
	ErrAlreadyExists Kind = "already_exists"   // the name is taken
	ErrConflict      Kind = "conflict"         // the state forbids it now (in use, busy)
	ErrUnavailable   Kind = "unavailable"      // something the host lacks (a tool, a kernel)
	ErrFailed        Kind = "operation_failed" // it was tried, and failed
)

// Error is a failure of a kind, with what to tell the user.
type Error struct {
	Kind    Kind
	Message string
}

// Error formats as "kind: message", as a wire error does.
func (e *Error) Error() string { return string(e.Kind) + ": " + e.Message }

func (e *Error) Unwrap() error { return e.Kind }

// Errorf is a failure of kind with a formatted message.
func Errorf(kind Kind, format string, args ...any) *Error {
	return &Error{Kind: kind, Message: fmt.Sprintf(format, args...)}
}
