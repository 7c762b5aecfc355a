package rpc

import (
	"context"
	"errors"
	"strings"
)

// ErrUnreachable marks a call that never reached a server: no socket, nobody
// listening, or a helper command that could not be started.
var ErrUnreachable = errors.New("server unreachable")

// CodeOf returns the protocol error code for err: the code of an
// *ErrorResponse in its chain, canceled or timeout for context errors, and
// operation_failed for anything else.
func CodeOf(err error) string {
	var e *ErrorResponse
	switch {
	case err == nil:
		return ""
	case errors.As(err, &e):
		return e.Code
	case errors.Is(err, context.Canceled):
		return CodeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return CodeTimeout
	default:
		return CodeOperationFailed
	}
}

// toErrorResponse turns any handler error into the wire error, stamped with
// opID. It never mutates an *ErrorResponse the handler returned.
func toErrorResponse(err error, opID string) *ErrorResponse {
	msg := err.Error()
	if e, ok := err.(*ErrorResponse); ok {
		msg = e.Message
	}
	code := CodeOf(err)
	if code == "" {
		// An *ErrorResponse built without a code; the wire needs one.
		code = CodeOperationFailed
	}
	return &ErrorResponse{
		Code:    code,
		Message: oneLine(msg),
		OpID:    opID,
	}
}

// oneLine keeps an error message on one line, as the protocol asks.
func oneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	return strings.Join(strings.Fields(strings.NewReplacer("\r", " ", "\n", "; ").Replace(s)), " ")
}
