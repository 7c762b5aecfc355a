package api

// MethodHostDoctor is the daemon's host.doctor: its own checks of what it
// needs on this host (the engine and its tools, the accelerator, the
// default image's parts, standbys), as rows `banger doctor` shows.
const MethodHostDoctor = "host.doctor"

// Statuses of a doctor row. Only fail makes `banger doctor` exit 1.
const (
	DoctorOK   = "ok"
	DoctorWarn = "warn" // works, but slower or with less than it could
	DoctorFail = "fail" // something banger needs is missing or wrong
	DoctorSkip = "skip" // does not apply here, and why
)

// DoctorRow is one check's answer.
type DoctorRow struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	// Code says why a row warns or fails, in a word that stays: scripts
	// and the client match on it, never on Detail.
	Code   string `json:"code,omitempty"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// DoctorResult answers host.doctor (and `bangerd doctor`, `bangerd-root
// doctor`): rows in the order they are shown.
type DoctorResult struct {
	Rows []DoctorRow `json:"rows"`
}

// Why KVM cannot run guests (KVMProbe.Code, and the code of the doctor's
// accelerator row).
const (
	KVMMissing   = "kvm_missing"    // no /dev/kvm
	KVMDenied    = "kvm_denied"     // the daemon's user may not open it
	KVMBadDevice = "kvm_bad_device" // it opens, but does not speak the KVM API
	KVMCannotRun = "kvm_cannot_run" // a test boot under it failed or crawled (nested, emulated)
)
