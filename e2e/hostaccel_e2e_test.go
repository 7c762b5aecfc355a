package e2e_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/api"
)

// accelRow runs `banger doctor --json` and returns its accelerator row.
func (s *sandbox) accelRow() (status, detail string) {
	s.t.Helper()
	var rep struct {
		Rows []struct{ Name, Status, Detail string }
	}
	s.banger("doctor", "--json").json(s.t, &rep)
	for _, r := range rep.Rows {
		if r.Name == "accelerator" {
			return r.Status, r.Detail
		}
	}
	s.t.Fatalf("no accelerator row: %+v", rep.Rows)
	return "", ""
}

// The daemon says which accelerator its VMs get and why (host.accel),
// and the doctor shows it. Without the default image there is no kernel
// to test-boot: the answer rests on /dev/kvm alone, and a refusal there
// is kept for the VMs as a probe's answer is.
func TestHostAccelAndItsDoctorRow(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed (packaging/test.sh installs it)")
	}
	s := newSandbox(t)
	s.startProcess(0, &bytes.Buffer{}, bangerBin, "bangerd", "--helper", "none", "--accel", "auto")
	waitSocket(t, s.socket())
	var res api.HostAccelResult
	if err := s.call(api.MethodHostAccel, nil, &res); err != nil {
		t.Fatal(err)
	}
	t.Logf("host.accel: %+v", res)
	_, kvmErr := os.Stat("/dev/kvm")
	status, detail := s.accelRow()
	t.Logf("doctor: %s %s", status, detail)
	switch {
	case res.Configured != "auto" || !res.Usable || res.Reason == "":
		t.Errorf("host.accel: %+v", res)
	case errors.Is(kvmErr, os.ErrNotExist):
		if res.Accel != "tcg" || res.Probe == nil || res.Probe.Usable || !strings.Contains(res.Reason, "no /dev/kvm") {
			t.Errorf("without /dev/kvm: %+v", res)
		}
		if _, err := os.Stat(filepath.Join(s.state, "banger", "kvm-probe.json")); err != nil {
			t.Errorf("the answer is not kept for the VMs: %v", err)
		}
		if status != "warn" || !strings.Contains(detail, "tcg") || !strings.Contains(detail, "no /dev/kvm") {
			t.Errorf("doctor row: %s %s", status, detail)
		}
	case res.Accel == "tcg":
		if res.Probe == nil || res.Probe.Usable || status != "warn" {
			t.Errorf("fell back to tcg: %+v; doctor %s %s", res, status, detail)
		}
	default: // kvm (a kept probe) or not decided yet
		if status != "ok" {
			t.Errorf("doctor row: %s %s for %+v", status, detail, res)
		}
	}
	s.stopDaemon()

	// TCG chosen: no probe, and fine.
	s.startProcess(0, &bytes.Buffer{}, bangerBin, "bangerd", "--helper", "none", "--accel", "tcg")
	waitSocket(t, s.socket())
	if err := s.call(api.MethodHostAccel, nil, &res); err != nil {
		t.Fatal(err)
	}
	if res.Configured != "tcg" || res.Accel != "tcg" || !res.Usable {
		t.Errorf("--accel tcg: %+v", res)
	}
	if status, detail := s.accelRow(); status != "ok" || !strings.Contains(detail, "--accel tcg") {
		t.Errorf("doctor row with --accel tcg: %s %s", status, detail)
	}
	s.stopDaemon()

	// KVM chosen where it cannot run: VMs cannot start, the row fails.
	if !errors.Is(kvmErr, os.ErrNotExist) {
		return
	}
	s.startProcess(0, &bytes.Buffer{}, bangerBin, "bangerd", "--helper", "none", "--accel", "kvm")
	waitSocket(t, s.socket())
	if err := s.call(api.MethodHostAccel, nil, &res); err != nil {
		t.Fatal(err)
	}
	if res.Accel != "kvm" || res.Usable {
		t.Errorf("--accel kvm without /dev/kvm: %+v", res)
	}
	if status, detail := s.accelRow(); status != "fail" || !strings.Contains(detail, "cannot start") {
		t.Errorf("doctor row with --accel kvm: %s %s", status, detail)
	}
	s.banger("doctor").want(t, 1)
}
