package agentlink

import (
	"banger/internal/api"

	"bytes"
	"encoding/hex"
)

// The channel's wire format, shared by both ends.
//
// A serial port is one byte stream that outlives its users: the host end
// can be closed and reopened (a daemon restart) without the guest seeing
// it, when the reconnection is quick, and bytes of an old session may
// still be in flight. So every session starts with a handshake that
// separates it from what came before:
//
//  1. The host connects and writes a reset frame: 12 bytes, "\xffBGR" and
//     a random 8-byte nonce. It is the size of a yamux header but starts
//     with a byte no yamux header has (yamux's version is 0), so the
//     guest recognises it where a frame starts, also in the middle of an
//     old session, which it then ends.
//  2. The agent answers with one line, the Hello as JSON, echoing the
//     nonce. The host skips everything before the Hello that carries its
//     nonce: leftovers of an old session cannot be taken for it.
//  3. Both ends then run yamux (the host is the client); each stream
//     carries one rpc request and its response, as on banger's Unix
//     sockets.
//
// The host sends nothing after its reset frame until it has the Hello, so
// the guest never has to put back bytes it read past a reset.

// ResetSize is the length of a reset frame.
const ResetSize = 12

const resetMagic = "\xffBGR"

// ResetFrame returns the reset frame that carries nonce.
func ResetFrame(nonce [8]byte) []byte {
	return append([]byte(resetMagic), nonce[:]...)
}

// ParseReset reports whether b (ResetSize bytes) is a reset frame, and
// its nonce in hex, as the Hello echoes it.
func ParseReset(b []byte) (nonce string, ok bool) {
	if len(b) != ResetSize || !bytes.HasPrefix(b, []byte(resetMagic)) {
		return "", false
	}
	return hex.EncodeToString(b[len(resetMagic):]), true
}

// ResetMagic is the first bytes of a reset frame, for a reader that scans
// a stream for one.
func ResetMagic() []byte { return []byte(resetMagic) }

// HelloPrefix starts every Hello line; the host scans for it.
const HelloPrefix = `{"agent":"banger"`

// Hello is the agent's readiness message: the only sign that a guest is
// up. It is one line of JSON.
type Hello struct {
	// Agent is always "banger"; it comes first so that every Hello
	// starts with HelloPrefix.
	Agent    string `json:"agent"`
	Ready    bool   `json:"ready"`
	Version  string `json:"version"`
	BootID   string `json:"boot_id"`
	Hostname string `json:"hostname"`
	// Nonce echoes the host's reset frame, in hex.
	Nonce string `json:"nonce"`
}

// AgentName is Hello.Agent.
const AgentName = "banger"

// Agent methods. Exec and Untar are stream methods: after the response
// the stream carries session frames (package session).
const (
	MethodPing     = "agent.ping"
	MethodPowerOff = "agent.poweroff"
	MethodPorts    = "agent.ports"
	MethodExec     = "agent.exec"   // params session.Exec
	MethodUntar    = "agent.untar"  // params session.Untar
	MethodTar      = "agent.tar"    // params session.Tar
	MethodSignal   = "agent.signal" // params SignalParams
)

// SignalParams is the params of agent.signal: a signal for the command of
// the exec session whose call had the op id OpID. It travels on a stream
// of its own, so it never waits behind the session's input.
type SignalParams struct {
	OpID   string `json:"op_id"`
	Signal int    `json:"signal"`
}

// Port is a listening socket in the guest (agent.ports); the daemon
// passes it on to the client as it is.
type Port = api.GuestPort

// PortsResult answers agent.ports, sorted by port, then proto and
// address.
type PortsResult struct {
	Ports []Port `json:"ports"`
}

// PingResult answers agent.ping.
type PingResult struct {
	Version  string  `json:"version"`
	BootID   string  `json:"boot_id"`
	Hostname string  `json:"hostname"`
	UptimeMS float64 `json:"uptime_ms"`
}
