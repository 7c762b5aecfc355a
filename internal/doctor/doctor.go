// Package doctor is what `banger doctor` is made of: rows, each made by
// a check in a table, where the resource lives. The client checks its own
// install and its connection to the daemon; the daemon (host.doctor, or
// `bangerd doctor` when none runs) checks the engine, the accelerator and
// the default image's parts; the helper (`bangerd-root doctor`) checks
// the bridge and NAT it makes. The client renders them all.
package doctor

import (
	"context"
	"time"

	"banger/internal/api"
)

// Bounds of the doctor's calls to a daemon: it must answer quickly, also
// when the daemon hangs. A slow call may run sudo (host.check) or the
// daemon's one KVM test boot (host.accel).
const (
	CallTimeout     = 3 * time.Second
	SlowCallTimeout = 10 * time.Second
)

// Check makes one row of a table; the table supplies its name.
type Check[H any] struct {
	Name string
	Run  func(ctx context.Context, h H) api.DoctorRow
}

// Run runs each check on h, in order.
func Run[H any](ctx context.Context, h H, checks []Check[H]) []api.DoctorRow {
	rows := make([]api.DoctorRow, 0, len(checks))
	for _, c := range checks {
		r := c.Run(ctx, h)
		r.Name = c.Name
		rows = append(rows, r)
	}
	return rows
}

// OK is a row that holds.
func OK(detail string) api.DoctorRow { return api.DoctorRow{Status: api.DoctorOK, Detail: detail} }

// Skip is a row that does not apply here, and why.
func Skip(detail string) api.DoctorRow { return api.DoctorRow{Status: api.DoctorSkip, Detail: detail} }

// Warn is a row that works with less than it could: code says why, fix
// what to do.
func Warn(code, detail, fix string) api.DoctorRow {
	return api.DoctorRow{Status: api.DoctorWarn, Code: code, Detail: detail, Fix: fix}
}

// Fail is a row banger cannot work without.
func Fail(code, detail, fix string) api.DoctorRow {
	return api.DoctorRow{Status: api.DoctorFail, Code: code, Detail: detail, Fix: fix}
}

// Find is the row called name, or false.
func Find(rows []api.DoctorRow, name string) (api.DoctorRow, bool) {
	for _, r := range rows {
		if r.Name == name {
			return r, true
		}
	}
	return api.DoctorRow{}, false
}
