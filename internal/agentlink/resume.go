package agentlink

import (
	"context"
	"net/netip"
)

// MethodResume gives a guest restored from a warm snapshot its own
// identity: the snapshot's memory holds the identity of the guest it was
// taken from, which every guest restored from it would otherwise share.
const MethodResume = "agent.resume" // params ResumeParams

// ResumeParams is the identity of one restored guest.
type ResumeParams struct {
	Hostname string `json:"hostname"`
	// MachineID is /etc/machine-id: 32 lowercase hex digits.
	MachineID string `json:"machine_id"`
	// BootID replaces the kernel's boot id in what the agent reports
	// (Hello, ping): restored guests share the kernel's.
	BootID string `json:"boot_id"`
	// Seed is mixed into the kernel's random pool, which is then
	// reseeded: restored guests share the pool's state. 32 to 512 bytes.
	Seed []byte `json:"seed"`
	// TimeUnixNS sets the guest's clock, which stopped when the snapshot
	// was taken.
	TimeUnixNS int64 `json:"time_unix_ns"`
	// Network configures eth0 anew; nil leaves it as it is.
	Network *ResumeNetwork `json:"network,omitempty"`
}

// ResumeNetwork is eth0's configuration after a restore.
type ResumeNetwork struct {
	Address netip.Prefix `json:"address"`
	Gateway netip.Addr   `json:"gateway,omitzero"`
	DNS     netip.Addr   `json:"dns,omitzero"`
	Search  string       `json:"search,omitempty"`
	// MAC is eth0's new hardware address; "" keeps the one it has.
	MAC string `json:"mac,omitempty"`
}

// ResumeResult answers agent.resume.
type ResumeResult struct {
	// DurationMS is how long the guest took to take the identity on.
	DurationMS float64 `json:"duration_ms"`
}

// Resume gives the restored guest its identity.
func (l *Link) Resume(ctx context.Context, p ResumeParams) (ResumeResult, error) {
	var r ResumeResult
	err := l.Call(ctx, MethodResume, p, &r)
	return r, err
}
