package api

import "time"

// MethodHostAccel is the daemon's host.accel: the accelerator its VMs
// get, and why.
const MethodHostAccel = "host.accel"

// Accelerators, as host.accel names them.
const (
	AccelAuto = "auto" // KVM when a test boot under it works, else TCG
	AccelKVM  = "kvm"
	AccelTCG  = "tcg" // QEMU's software emulation: slower, works everywhere
)

// HostAccelResult answers host.accel.
type HostAccelResult struct {
	// Configured is the daemon's --accel: auto, kvm or tcg.
	Configured string `json:"configured"`
	// Accel is what a VM started now runs with, kvm or tcg; empty when
	// auto has not decided yet (KVM opens, but no test boot has run:
	// the first VM start runs it).
	Accel string `json:"accel,omitempty"`
	// Usable is false when VMs cannot start with Accel: kvm chosen where
	// KVM cannot run guests.
	Usable bool `json:"usable"`
	// Reason says why, in one sentence.
	Reason string `json:"reason"`
	// Probe is the KVM probe's answer the daemon keeps; nil while there
	// is none.
	Probe *KVMProbe `json:"probe,omitempty"`
}

// KVMProbe is the daemon's answer to "can KVM run guests here?", found
// once per host configuration (QEMU, kernel release, /dev/kvm) by a test
// boot, and kept across restarts.
type KVMProbe struct {
	Usable bool   `json:"usable"`
	Reason string `json:"reason"`
	// Code says why it is not usable (KVMMissing, ...); it may be empty
	// in an answer kept by an older daemon.
	Code     string    `json:"code,omitempty"`
	TookMS   float64   `json:"took_ms"`
	ProbedAt time.Time `json:"probed_at"`
}
