// Package api holds the wire types that two applets share: the daemon's
// method results the client decodes, and the helper's results the daemon
// decodes. Both sides import them from here, so a field is named once.
package api

import (
	"encoding/json"
	"time"

	"banger/internal/privapi"
	"banger/rpc"
)

// Build identifies the binary.
type Build struct {
	Version string `json:"version"`
	Commit  string `json:"commit,omitempty"`
}

// String is "VERSION (COMMIT)" or "VERSION".
func (b Build) String() string {
	if b.Commit == "" {
		return b.Version
	}
	return b.Version + " (" + b.Commit + ")"
}

// Applet names.
const (
	AppletClient = "banger"
	AppletDaemon = "bangerd"
	AppletHelper = "bangerd-root"
	AppletAgent  = "banger-agent"
)

// Daemon methods.
const (
	MethodPing      = "ping"
	MethodVersion   = "version"
	MethodShutdown  = "shutdown"
	MethodHostCheck = "host.check"
)

// PingResult answers ping.
type PingResult struct {
	Version  string  `json:"version"`
	PID      int     `json:"pid"`
	UptimeMS float64 `json:"uptime_ms"`
}

// VersionResult answers version: the daemon's build, and what it knows of
// the helper's.
type VersionResult struct {
	Build
	Protocol int    `json:"protocol"`
	Go       string `json:"go"`
}

// HostCheckResult answers host.check: how the daemon reached the helper
// and what the helper said.
type HostCheckResult struct {
	HelperMode string             `json:"helper_mode"`
	HelperPath string             `json:"helper_path"`
	Helper     privapi.PingResult `json:"helper"`
}

// Operation methods.
const (
	MethodOperationStatus = "operation.status"
	MethodOperationWait   = "operation.wait"
	MethodOperationCancel = "operation.cancel"
	MethodOperationList   = "operation.list"
)

// Operation states.
const (
	OpRunning   = "running"
	OpSucceeded = "succeeded"
	OpFailed    = "failed"
	OpCanceled  = "canceled"
)

// Stage states.
const (
	StageRunning = "running"
	StageDone    = "done"
	StageFailed  = "failed"
	StageUndone  = "undone" // a done stage rolled back after a failure or cancel
)

// Operation is long work in the daemon: its id is the op id of the call
// that began it, so the same id finds its log records.
type Operation struct {
	ID       string             `json:"id"`
	Kind     string             `json:"kind"`
	Target   string             `json:"target,omitempty"`
	State    string             `json:"state"`
	Created  time.Time          `json:"created"`
	Finished *time.Time         `json:"finished,omitempty"`
	Stages   []Stage            `json:"stages"`
	Current  string             `json:"current,omitempty"`
	Result   json.RawMessage    `json:"result,omitempty"`
	Error    *rpc.ErrorResponse `json:"error,omitempty"`
}

// Stage is one named step of an operation.
type Stage struct {
	Name       string    `json:"name"`
	State      string    `json:"state"`
	Started    time.Time `json:"started"`
	DurationMS float64   `json:"duration_ms"`
	// Detail is a running stage's progress ("45% (600/1300 objects)").
	Detail string `json:"detail,omitempty"`
	Error  string `json:"error,omitempty"`
}

// Done reports whether the operation has ended.
func (o *Operation) Done() bool { return o.State != OpRunning }

// OperationID is the params of operation.status and operation.cancel.
type OperationID struct {
	ID string `json:"id"`
}

// OperationWait is the params of operation.wait.
type OperationWait struct {
	ID        string `json:"id"`
	TimeoutMS int    `json:"timeout_ms"`
}
