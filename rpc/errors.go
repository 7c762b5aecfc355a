package rpc

import (
	"context"
	"errors"
	"strings"

	"banger/internal/errdefs"
)

// ErrUnreachable marks a call that never reached a server: no socket, nobody
// listening, or a helper command that could not be started.
var ErrUnreachable = errors.New("server unreachable")

// CodeOf returns the protocol error code for err: the code of an
// *ErrorResponse in its chain, the code of an errdefs kind (the one place
// those are mapped), canceled or timeout for context errors, and
// operation_failed for anything else.
func CodeOf(err error) string {
	var e *ErrorResponse
	var kind errdefs.Kind
	switch {
	case err == nil:
		return ""
	case errors.As(err, &e):
		return e.Code
	case errors.As(err, &kind):
		// A storage or domain package's kind: its text is the code.
		return string(kind)
	case errors.Is(err, context.Canceled):
		return CodeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return CodeTimeout
	default:
		return CodeOperationFailed
	}
}

// MessageOf is the message of the first *ErrorResponse or errdefs error
// in err's chain, without its code (a stage or an operation shows the
// code apart), else err.Error().
func MessageOf(err error) string {
	var re *ErrorResponse
	var de *errdefs.Error
	switch {
	case errors.As(err, &re):
		return re.Message
	case errors.As(err, &de):
		return de.Message
	}
	return err.Error()
}

// toErrorResponse turns any handler error into the wire error, stamped with
// opID. It never mutates an *ErrorResponse the handler returned.
func toErrorResponse(err error, opID string) *ErrorResponse {
	msg := err.Error()
	switch e := err.(type) {
	case *ErrorResponse:
		msg = e.Message
	case *errdefs.Error:
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
