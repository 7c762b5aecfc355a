package client

import (
	"context"
	"errors"

	"banger/rpc"
)

// Exit codes of the banger client. They are part of banger's interface for
// scripts: never renumber one, only add.
const (
	ExitOK          = 0  // success
	ExitFailed      = 1  // the operation failed (operation_failed, or anything unclassified)
	ExitUsage       = 2  // bad command line or parameters (also invalid_params, bad_request)
	ExitUnreachable = 3  // the daemon is not running and could not be started
	ExitNotFound    = 4  // not_found
	ExitConflict    = 5  // already_exists, conflict, not_running: wrong state for the call
	ExitDenied      = 6  // unauthorized
	ExitUnavailable = 7  // unavailable: a dependency (engine, helper, KVM) is missing or down
	ExitTimeout     = 8  // timeout
	ExitCanceled    = 9  // canceled
	ExitProtocol    = 10 // bad_version, unknown_method: client and daemon do not match
)

// exitCodeFor maps a protocol error code to the client's exit code.
var exitCodeFor = map[string]int{
	rpc.CodeBadRequest:      ExitUsage,
	rpc.CodeInvalidParams:   ExitUsage,
	rpc.CodeBadVersion:      ExitProtocol,
	rpc.CodeUnknownMethod:   ExitProtocol,
	rpc.CodeNotFound:        ExitNotFound,
	rpc.CodeAlreadyExists:   ExitConflict,
	rpc.CodeConflict:        ExitConflict,
	rpc.CodeNotRunning:      ExitConflict,
	rpc.CodeUnauthorized:    ExitDenied,
	rpc.CodeUnavailable:     ExitUnavailable,
	rpc.CodeTimeout:         ExitTimeout,
	rpc.CodeCanceled:        ExitCanceled,
	rpc.CodeOperationFailed: ExitFailed,
}

// Client-side error codes, for failures that never reached a server.
const (
	codeUsage       = "usage"
	codeUnreachable = "daemon_unreachable"
)

// cliError is an error of the client itself with its exit code.
type cliError struct {
	code string
	exit int
	err  error
}

func (e *cliError) Error() string { return e.err.Error() }
func (e *cliError) Unwrap() error { return e.err }

func usageError(err error) error { return &cliError{code: codeUsage, exit: ExitUsage, err: err} }

// classify returns the wire-style code and exit code of err.
func classify(err error) (string, int) {
	var ce *cliError
	var re *rpc.ErrorResponse
	switch {
	case errors.As(err, &ce):
		return ce.code, ce.exit
	case errors.As(err, &re):
		if code, ok := exitCodeFor[re.Code]; ok {
			return re.Code, code
		}
		return re.Code, ExitFailed
	case errors.Is(err, rpc.ErrUnreachable):
		return codeUnreachable, ExitUnreachable
	case errors.Is(err, context.Canceled):
		return rpc.CodeCanceled, ExitCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return rpc.CodeTimeout, ExitTimeout
	}
	return rpc.CodeOperationFailed, ExitFailed
}
