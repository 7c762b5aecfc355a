package engine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/layout"
	"banger/logging"
)

// DefaultProbeTimeout bounds the KVM probe. Where KVM works, the probe's
// test boot ends in well under a second; on a nested host that opens
// /dev/kvm but cannot really run Linux, the guest crawls or QEMU stops on
// an emulation failure, and the probe gives up here.
const DefaultProbeTimeout = 4 * time.Second

// KVMStatus is the probe's answer: can KVM run guests on this host?
type KVMStatus struct {
	Usable bool   `json:"usable"`
	Reason string `json:"reason"`
	// Code says why it is not usable (api.KVMMissing, ...); "" when it
	// is, and in answers kept before codes were.
	Code string `json:"code,omitempty"`
	// TookMS is how long the probe took.
	TookMS   float64   `json:"took_ms"`
	ProbedAt time.Time `json:"probed_at"`
	// Key is what the answer depends on (the QEMU binary, the host
	// kernel, /dev/kvm); a cached answer with another key is stale.
	Key string `json:"key"`
}

// kvmProbeMarker is what the test boot prints when the kernel got all the
// way to mounting a root file system (it is given none, and panics).
const kvmProbeMarker = "VFS: Unable to mount root fs"

// KVM returns whether KVM can run guests here, probing at most once per
// host configuration: the answer is kept in memory and in StateDir. kernel
// is a kernel to test-boot (an uncompressed vmlinux boots fastest).
func (q *QEMU) KVM(ctx context.Context, kernel string) (KVMStatus, error) {
	bin, err := q.binary()
	if err != nil {
		return KVMStatus{}, err
	}
	return q.kvmStatus(ctx, bin, kernel), nil
}

// KnownKVM returns the probe's kept answer for this host's configuration,
// from memory or StateDir, without probing; ok is false while there is
// none (no VM has started since the configuration changed). host.accel
// reports it.
func (q *QEMU) KnownKVM(ctx context.Context) (st KVMStatus, ok bool, err error) {
	bin, err := q.binary()
	if err != nil {
		return KVMStatus{}, false, err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	st, ok = q.knownLocked(logging.From(ctx), probeKey(bin))
	return st, ok, nil
}

// knownLocked finds the answer for key in memory, else in StateDir.
func (q *QEMU) knownLocked(log *zerolog.Logger, key string) (KVMStatus, bool) {
	if q.kvm != nil && q.kvm.Key == key {
		return *q.kvm, true
	}
	if q.StateDir == "" {
		return KVMStatus{}, false
	}
	var st KVMStatus
	data, err := os.ReadFile(filepath.Join(q.StateDir, layout.KVMProbe))
	if err != nil || json.Unmarshal(data, &st) != nil || st.Key != key {
		return KVMStatus{}, false
	}
	q.kvm = &st
	logKVM(log, st, "cached")
	return st, true
}

func (q *QEMU) kvmStatus(ctx context.Context, bin, kernel string) KVMStatus {
	q.mu.Lock()
	defer q.mu.Unlock()
	log := logging.From(ctx)
	key := probeKey(bin)
	if st, ok := q.knownLocked(log, key); ok {
		return st
	}
	cache := ""
	if q.StateDir != "" {
		cache = filepath.Join(q.StateDir, layout.KVMProbe)
	}
	timeout := q.ProbeTimeout
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	st, final := ProbeKVM(ctx, bin, kernel, timeout)
	st.Key = key
	logKVM(log, st, "probed")
	if !final {
		// Interrupted, or nothing to test with: ask again next time.
		return st
	}
	q.kvm = &st
	if cache != "" {
		if err := os.MkdirAll(q.StateDir, 0o700); err == nil {
			if err := writeJSONAtomic(cache, st); err != nil {
				log.Warn().Err(err).Msg("cannot cache the KVM probe's answer")
			}
		}
	}
	return st
}

// logKVM says what the probe found; a KVM that cannot be used is a
// warning, since guests then run under TCG, several times slower.
func logKVM(log *zerolog.Logger, st KVMStatus, how string) {
	e := log.Info()
	msg := "KVM can run guests"
	if !st.Usable {
		e = log.Warn()
		msg = "KVM cannot run guests here; using TCG (slower)"
	}
	e.Str("reason", st.Reason).Str("answer", how).Float64("duration_ms", st.TookMS).Msg(msg)
}

// ProbeKVM finds out whether KVM can run a Linux guest here, within
// timeout: /dev/kvm must open and speak the stable API, and a test boot of
// kernel under KVM (no disk, no initrd) must reach the kernel's attempt to
// mount a root file system. final is false when the answer should not be
// kept (ctx ended, or no kernel was given).
func ProbeKVM(ctx context.Context, bin, kernel string, timeout time.Duration) (st KVMStatus, final bool) {
	start := time.Now()
	defer func() {
		st.TookMS = logging.Millis(time.Since(start))
		st.ProbedAt = start.UTC()
	}()
	if st, ok := OpenKVM(KVMDevice); !ok {
		return st, true
	}
	if kernel == "" {
		return KVMStatus{Reason: "/dev/kvm opens, but there is no kernel to test-boot with"}, false
	}

	reached, stderr, err := testBoot(ctx, bin, kernel, []string{"-accel", "kvm", "-cpu", "host"}, "", timeout)
	switch {
	case reached:
		return KVMStatus{Usable: true, Reason: "a test boot under KVM reached the root mount"}, true
	case ctx.Err() != nil:
		return KVMStatus{Reason: fmt.Sprintf("probe interrupted: %v", ctx.Err())}, false
	case errors.Is(err, context.DeadlineExceeded):
		return KVMStatus{Code: api.KVMCannotRun, Reason: fmt.Sprintf("a test boot under KVM did not get far in %s (a nested or emulated KVM?)", timeout)}, true
	case err != nil:
		return KVMStatus{Reason: fmt.Sprintf("test boot: %v", err)}, false
	default:
		if stderr == "" {
			stderr = "no error output"
		}
		return KVMStatus{Code: api.KVMCannotRun, Reason: "a test boot under KVM failed: " + stderr}, true
	}
}

// KVMDevice is the KVM device.
const KVMDevice = "/dev/kvm"

// OpenKVM checks the KVM device at p as a probe starts: it must open and
// speak the stable API. ok is false with the reason it does not.
func OpenKVM(p string) (st KVMStatus, ok bool) {
	f, err := os.OpenFile(p, os.O_RDWR|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return KVMStatus{Code: api.KVMMissing, Reason: "no " + p + ": KVM is not available on this host"}, false
	case errors.Is(err, os.ErrPermission):
		return KVMStatus{Code: api.KVMDenied, Reason: p + ": permission denied (add the user to the kvm group)"}, false
	case err != nil:
		return KVMStatus{Code: api.KVMBadDevice, Reason: fmt.Sprintf("open %s: %v", p, err)}, false
	}
	defer f.Close()
	const kvmGetAPIVersion = 0xae00 // _IO(KVMIO, 0x00)
	if v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion); err != nil || v != 12 {
		return KVMStatus{Code: api.KVMBadDevice, Reason: fmt.Sprintf("%s: KVM API version %d (%v), want 12", p, v, err)}, false
	}
	return KVMStatus{Reason: p + " opens and speaks KVM API 12"}, true
}

// testBoot boots kernel with no disk and no initrd and reports whether it
// got as far as mounting a root file system (kvmProbeMarker) within
// timeout, and what QEMU said on stderr. err is DeadlineExceeded when
// the time ran out.
func testBoot(ctx context.Context, bin, kernel string, accel []string, extraArgs string, timeout time.Duration) (reached bool, stderr string, err error) {
	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	args := append([]string{"-machine", "microvm,acpi=on"}, accel...)
	args = append(args, "-m", "128", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", kernel,
		"-append", strings.TrimSpace("console=ttyS0 panic=-1 quiet root=/dev/banger-kvm-probe "+extraArgs),
		"-serial", "stdio")
	cmd := exec.CommandContext(bctx, bin, args...)
	cmd.WaitDelay = time.Second
	var errOut bytes.Buffer
	cmd.Stderr = &limitedWriter{w: &errOut, n: 4096}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return false, "", err
	}
	if err := cmd.Start(); err != nil {
		return false, "", err
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if strings.Contains(sc.Text(), kvmProbeMarker) {
			reached = true
			cancel() // the answer is in; QEMU may go
			break
		}
	}
	go io.Copy(io.Discard, out)
	cmd.Wait()
	stderr = strings.Join(strings.Fields(errOut.String()), " ")
	if !reached && bctx.Err() != nil && ctx.Err() == nil {
		return false, stderr, context.DeadlineExceeded
	}
	return reached, stderr, ctx.Err()
}

// probeKey names what the probe's answer depends on.
func probeKey(bin string) string {
	var uts unix.Utsname
	unix.Uname(&uts)
	key := fmt.Sprintf("host=%s qemu=%s", unix.ByteSliceToString(uts.Release[:]), bin)
	if fi, err := os.Stat(bin); err == nil {
		key += fmt.Sprintf(" size=%d mtime=%d", fi.Size(), fi.ModTime().Unix())
	}
	if fi, err := os.Stat(KVMDevice); err == nil {
		key += fmt.Sprintf(" kvm=%s", fi.Mode())
		// Joining the kvm group changes no file, only whether we may
		// open it: a kept "permission denied" must not outlive the fix.
		if unix.Access(KVMDevice, unix.R_OK|unix.W_OK) != nil {
			key += " denied"
		}
	} else {
		key += " kvm=none"
	}
	return key
}

// limitedWriter keeps the first n bytes written to it.
type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
