package daemon

import (
	"context"

	"banger/applets/daemon/engine"
	"banger/internal/api"
	"banger/rpc"
)

// kvmProber is what host.accel asks of the engine (*engine.QEMU): the
// probe's kept answer, and the device checks the probe starts with.
type kvmProber interface {
	KnownKVM(ctx context.Context) (engine.KVMStatus, bool, error)
	KVM(ctx context.Context, kernel string) (engine.KVMStatus, error)
}

// hostAccel answers host.accel: the accelerator a VM started now gets,
// and why. It boots nothing (the doctor promises that): with no kept
// answer it checks /dev/kvm only, and the first VM start test-boots.
func (d *daemon) hostAccel(ctx context.Context, _ rpc.NoParams) (api.HostAccelResult, error) {
	if d.engine == nil {
		return api.HostAccelResult{}, rpc.Errorf(rpc.CodeUnavailable, "this daemon's engine does not report its accelerator")
	}
	q, accel := d.engine.QEMU()
	return reportAccel(ctx, accel, q)
}

// reportAccel decides what configured resolves to, as the engine's
// Launch does, from the prober's answer.
func reportAccel(ctx context.Context, configured engine.Accel, q kvmProber) (api.HostAccelResult, error) {
	res := api.HostAccelResult{Configured: string(configured)}
	st, known, err := q.KnownKVM(ctx)
	if err != nil {
		return res, err // no QEMU: says which package to install
	}
	if !known && configured != engine.AccelTCG {
		// No kernel: the device checks only. A refusal there (no
		// /dev/kvm, permission denied) is kept as a probe's answer;
		// "it opens" waits for a test boot.
		if st, err = q.KVM(ctx, ""); err != nil {
			return res, err
		}
		if _, known, err = q.KnownKVM(ctx); err != nil {
			return res, err
		}
	}
	if known {
		res.Probe = &api.KVMProbe{Usable: st.Usable, Reason: st.Reason, Code: st.Code, TookMS: st.TookMS, ProbedAt: st.ProbedAt}
	}
	res.Usable = true
	switch {
	case configured == engine.AccelTCG:
		res.Accel, res.Reason = api.AccelTCG, "chosen with --accel tcg"
	case configured == engine.AccelKVM && known && !st.Usable:
		res.Accel, res.Usable = api.AccelKVM, false
		res.Reason = "chosen with --accel kvm, but KVM cannot run guests here: " + st.Reason
	case configured == engine.AccelKVM:
		res.Accel, res.Reason = api.AccelKVM, "chosen with --accel kvm"
	case known && st.Usable:
		res.Accel, res.Reason = api.AccelKVM, st.Reason
	case known:
		res.Accel, res.Reason = api.AccelTCG, "KVM cannot run guests here: "+st.Reason
	default:
		res.Reason = "/dev/kvm opens and speaks the KVM API; the first VM start test-boots under KVM and falls back to TCG if that fails"
	}
	return res, nil
}
