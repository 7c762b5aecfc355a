// Package api holds the wire types that two applets share: the daemon's
// method results the client decodes, and the helper's results the daemon
// decodes. Both sides import them from here, so a field is named once.
package api

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
)

// Daemon methods.
const (
	MethodPing      = "ping"
	MethodVersion   = "version"
	MethodShutdown  = "shutdown"
	MethodHostCheck = "host.check"
)

// Helper methods.
const (
	MethodPrivPing = "priv.ping"
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

// PrivPingResult answers the helper's priv.ping.
type PrivPingResult struct {
	Version      string   `json:"version"`
	EUID         int      `json:"euid"`
	CapEffective string   `json:"cap_effective"`
	Capabilities []string `json:"capabilities"`
}

// HostCheckResult answers host.check: how the daemon reached the helper
// and what the helper said.
type HostCheckResult struct {
	HelperMode string         `json:"helper_mode"`
	HelperPath string         `json:"helper_path"`
	Helper     PrivPingResult `json:"helper"`
}
