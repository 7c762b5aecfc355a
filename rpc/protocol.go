// Package rpc implements banger's wire protocol (PROTOCOL.md, version 1):
// one JSON request and one JSON response per Unix-socket connection, with
// op ids that tie a CLI command to every log record it caused. A server
// may also serve stream methods (Server.Streams) on a socket of their
// own: the call starts with the same request and response, then the
// connection carries the method's session.
//
// The package holds the envelope types, the error type and its codes, op ids
// on contexts, a client (Client for sockets, CommandClient for the sudo stdio
// mode) and a Server with a dispatch table. It knows nothing of VMs or of
// any applet's methods.
package rpc

import (
	"encoding/json"
	"fmt"
	"io"
)

// Version is the protocol version this package speaks.
const Version = 1

// MaxRequestSize bounds one request in bytes; a larger one is a bad_request.
const MaxRequestSize = 1 << 20

// MaxResponseSize bounds one response a client reads (vm.logs pages and
// lists stay far below it).
const MaxResponseSize = 64 << 20

// Request is the one JSON object a caller writes on a connection.
type Request struct {
	Version int             `json:"version"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params,omitempty"`
	OpID    string          `json:"op_id,omitempty"`
	// Traceparent is the W3C trace context of the command the request
	// belongs to (trace.go).
	Traceparent string `json:"traceparent,omitempty"`
}

// Response is the one JSON object a server writes back.
type Response struct {
	OK     bool            `json:"ok"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *ErrorResponse  `json:"error,omitempty"`
}

// Error codes, the closed list of PROTOCOL.md.
const (
	CodeBadRequest      = "bad_request"
	CodeBadVersion      = "bad_version"
	CodeUnknownMethod   = "unknown_method"
	CodeInvalidParams   = "invalid_params"
	CodeNotFound        = "not_found"
	CodeAlreadyExists   = "already_exists"
	CodeConflict        = "conflict"
	CodeUnauthorized    = "unauthorized"
	CodeNotRunning      = "not_running"
	CodeUnavailable     = "unavailable"
	CodeCanceled        = "canceled"
	CodeTimeout         = "timeout"
	CodeOperationFailed = "operation_failed"
)

// ErrorResponse is the error object of a failed response. It is also the Go
// error that handlers return to choose a code, and that Client.Call returns
// when the server answered with an error, so callers can read the code and
// the op id with errors.As.
type ErrorResponse struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	OpID    string `json:"op_id,omitempty"`
}

// Error formats as "code: message", with " (op-...)" when an op id is set.
func (e *ErrorResponse) Error() string {
	if e.OpID == "" {
		return e.Code + ": " + e.Message
	}
	return e.Code + ": " + e.Message + " (" + e.OpID + ")"
}

// Errorf returns an *ErrorResponse with the given code and a formatted
// message. Handlers use it to pick the code the caller sees.
func Errorf(code, format string, args ...any) *ErrorResponse {
	return &ErrorResponse{Code: code, Message: fmt.Sprintf(format, args...)}
}

// skipNewline drops the newline that customarily ends a request or a
// response, so a stream session's bytes start right after it. It looks
// at the first byte only when its reader asks for one: a session may
// write long before it reads.
type skipNewline struct {
	r    io.Reader
	done bool
}

func (s *skipNewline) Read(p []byte) (int, error) {
	if s.done || len(p) == 0 {
		return s.r.Read(p)
	}
	n, err := s.r.Read(p[:1])
	if n == 0 {
		return 0, err
	}
	s.done = true
	if p[0] != '\n' {
		return 1, nil
	}
	if err != nil {
		return 0, err
	}
	return s.r.Read(p)
}
