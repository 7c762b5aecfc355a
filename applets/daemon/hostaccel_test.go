package daemon

import (
	"context"
	"strings"
	"testing"

	"banger/applets/daemon/engine"
	"banger/internal/api"
	"banger/rpc"
)

// fakeProber keeps an answer as the engine does: a device-level refusal
// is kept; "opens, no kernel" is not.
type fakeProber struct {
	kept    *engine.KVMStatus
	device  string // a device-level refusal ("no /dev/kvm"), "" when it opens
	noQEMU  bool
	kernels []string // the kernels probed with ("": device checks)
}

func (f *fakeProber) KnownKVM(context.Context) (engine.KVMStatus, bool, error) {
	if f.noQEMU {
		return engine.KVMStatus{}, false, rpc.Errorf(rpc.CodeUnavailable, "qemu-system-x86_64 not found")
	}
	if f.kept == nil {
		return engine.KVMStatus{}, false, nil
	}
	return *f.kept, true, nil
}

func (f *fakeProber) KVM(_ context.Context, kernel string) (engine.KVMStatus, error) {
	f.kernels = append(f.kernels, kernel)
	switch {
	case f.device != "":
		f.kept = &engine.KVMStatus{Reason: f.device}
		return *f.kept, nil
	case kernel == "":
		return engine.KVMStatus{Reason: "/dev/kvm opens, but there is no kernel to test-boot with"}, nil
	}
	panic("host.accel asked for a test boot")
}

func TestReportAccel(t *testing.T) {
	kept := &engine.KVMStatus{Usable: true, Reason: "a test boot under KVM reached the root mount", TookMS: 300}
	nested := &engine.KVMStatus{Reason: "a test boot under KVM did not get far in 4s (a nested or emulated KVM?)", TookMS: 4000}
	for _, tc := range []struct {
		name       string
		configured engine.Accel
		prober     fakeProber
		accel      string
		usable     bool
		reason     string
		probes     int  // device checks run
		probe      bool // a kept answer is reported
	}{
		{"auto, kvm works", engine.AccelAuto, fakeProber{kept: kept}, api.AccelKVM, true, "reached the root mount", 0, true},
		{"auto, nested kvm", engine.AccelAuto, fakeProber{kept: nested}, api.AccelTCG, true, "KVM cannot run guests here: a test boot", 0, true},
		{"auto, no /dev/kvm", engine.AccelAuto, fakeProber{device: "no /dev/kvm: KVM is not available on this host"}, api.AccelTCG, true, "KVM cannot run guests here: no /dev/kvm", 1, true},
		{"auto, not probed yet", engine.AccelAuto, fakeProber{}, "", true, "the first VM start test-boots", 1, false},
		{"tcg checks nothing", engine.AccelTCG, fakeProber{}, api.AccelTCG, true, "--accel tcg", 0, false},
		{"tcg, kvm would work", engine.AccelTCG, fakeProber{kept: kept}, api.AccelTCG, true, "--accel tcg", 0, true},
		{"kvm forced, works", engine.AccelKVM, fakeProber{kept: kept}, api.AccelKVM, true, "--accel kvm", 0, true},
		{"kvm forced, not probed yet", engine.AccelKVM, fakeProber{}, api.AccelKVM, true, "--accel kvm", 1, false},
		{"kvm forced, unusable", engine.AccelKVM, fakeProber{device: "/dev/kvm: permission denied (add the user to the kvm group)"}, api.AccelKVM, false, "but KVM cannot run guests here: /dev/kvm: permission denied", 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.prober
			res, err := reportAccel(context.Background(), tc.configured, &p)
			if err != nil {
				t.Fatal(err)
			}
			if res.Configured != string(tc.configured) || res.Accel != tc.accel || res.Usable != tc.usable || !strings.Contains(res.Reason, tc.reason) {
				t.Errorf("got %+v, want accel %q usable %v reason ~%q", res, tc.accel, tc.usable, tc.reason)
			}
			if (res.Probe != nil) != tc.probe {
				t.Errorf("probe reported: %+v, want %v", res.Probe, tc.probe)
			}
			if len(p.kernels) != tc.probes || strings.Join(p.kernels, "") != "" {
				t.Errorf("probed with %q, want %d device checks and no test boot", p.kernels, tc.probes)
			}
		})
	}

	// Without QEMU there is nothing to run VMs with: the engine's error,
	// which names the package.
	_, err := reportAccel(context.Background(), engine.AccelAuto, &fakeProber{noQEMU: true})
	if rpc.CodeOf(err) != rpc.CodeUnavailable {
		t.Errorf("no qemu: %v", err)
	}
}
