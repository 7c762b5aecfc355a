package e2e_test

// Real-guest benchmarks (issue 3): what banger's orchestration adds to a
// boot, how the daemon answers while guests boot, and what an idle daemon
// costs in memory.
//
//	go test -run '^$' -bench 'VM|Bare|Ping|RSS' -benchtime 5x ./e2e/
//
// Targets:
//
//   - `banger vm create` to ready ÷ a bare qemu-system-x86_64 boot of the
//     same kernel, initrd and image to the same readiness marker (the
//     agent's Hello on its virtio-serial port) ≤ 1.15: the ratio comes from
//     BenchmarkVMBootInterleaved, which runs both in every iteration.
//   - The daemon's ping p99 ≤ 20 ms while 4 VMs boot
//     (BenchmarkPingWhile4VMsBoot).
//   - An idle daemon's RSS ≤ 30 MiB (BenchmarkIdleDaemonRSS).
//
// Each benchmark starts a daemon of its own in a temporary directory and
// builds the default image there before it measures anything. Guests run
// under TCG on this kind of machine: each iteration takes seconds, so a
// few iterations (-benchtime 5x) are enough; medians are reported beside
// ns/op.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"banger/internal/agentlink"
	"banger/internal/api"
	"banger/rpc"
)

// vmBenchBoot bounds one boot in a benchmark; a hang fails it.
const vmBenchBoot = 2 * time.Minute

// needGuestTools skips a benchmark where the host cannot boot a guest, as
// needGuests does for tests.
func needGuestTools(b *testing.B) {
	b.Helper()
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("%s is not installed (packaging/test.sh installs it)", tool)
		}
	}
	if k, _ := filepath.Glob("/boot/vmlinuz-*"); len(k) == 0 {
		b.Skip("no host kernel in /boot (package linux-image-amd64)")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		b.Skip("no /bin/busybox (package busybox-static)")
	}
}

// vmBench is a user-mode banger of a benchmark's own: its directories, its
// daemon, and the default image built.
type vmBench struct {
	b      *testing.B
	dir    string
	env    []string
	socket string
	state  string // the daemon's state directory: DIR/state/banger

	daemon *exec.Cmd
	done   chan struct{} // closed when daemon has exited
	pid    int           // the daemon's pid, from its ping
}

// newVMBench starts a daemon in a new temporary directory and builds the
// default image (a create with --no-start, then its delete).
func newVMBench(b *testing.B) *vmBench {
	return newVMBenchWith(b, nil, nil)
}

// newVMBenchWith is newVMBench with extra environment for the daemon and
// the client, and prepare run on the state directory before the daemon
// starts.
func newVMBenchWith(b *testing.B, env []string, prepare func(state string)) *vmBench {
	b.Helper()
	needGuestTools(b)
	dir := benchTempDir(b, "bgv")
	os.Chmod(dir, 0o755)
	for _, d := range []string{"run", "state"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			b.Fatal(err)
		}
	}
	v := &vmBench{b: b, dir: dir, env: append(append(bangerBenchEnv(dir), "TMPDIR="+dir), env...),
		socket: filepath.Join(dir, "run", "banger", "bangerd.sock"), state: filepath.Join(dir, "state", "banger")}
	if prepare != nil {
		prepare(v.state)
	}
	// Registered after benchTempDir's cleanup, so it runs before it: no
	// VM of the benchmark outlives it.
	b.Cleanup(func() {
		v.stopDaemon()
		for _, pid := range v.enginePIDs() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	v.startDaemon()
	v.mustRun("vm", "create", "--name", "warm", "--no-start")
	v.mustRun("vm", "delete", "warm")
	return v
}

// startDaemon starts bangerd and waits until it answers ping.
func (v *vmBench) startDaemon() {
	v.b.Helper()
	logf, err := os.OpenFile(filepath.Join(v.dir, "bangerd.stderr"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		v.b.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bangerBin, "bangerd", "--helper", "none")
	cmd.Env = v.env
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		v.b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	v.daemon, v.done = cmd, done
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := v.ping()
		if err == nil {
			v.pid = res.PID
			return
		}
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(v.dir, "bangerd.stderr"))
			v.b.Fatalf("bangerd exited at start: %v\n%s", cmd.ProcessState, log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			v.b.Fatalf("bangerd does not answer ping within 30s: %v", err)
		}
	}
}

// stopDaemon stops the daemon (SIGTERM, then SIGKILL after 15 s); its VMs
// live on.
func (v *vmBench) stopDaemon() {
	if v.daemon == nil {
		return
	}
	v.daemon.Process.Signal(syscall.SIGTERM)
	select {
	case <-v.done:
	case <-time.After(15 * time.Second):
		v.daemon.Process.Kill()
		<-v.done
	}
	v.daemon = nil
}

func (v *vmBench) ping() (api.PingResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var res api.PingResult
	err := (&rpc.Client{Socket: v.socket}).Call(ctx, api.MethodPing, nil, &res)
	return res, err
}

// run runs the client and returns its stdout, or an error with its
// stderr.
func (v *vmBench) run(args ...string) (string, error) {
	out, _, err := v.runBoth(args...)
	return out, err
}

// runBoth runs the client and returns its stdout and stderr.
func (v *vmBench) runBoth(args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), vmBenchBoot)
	defer cancel()
	cmd := exec.CommandContext(ctx, bangerBin, args...)
	cmd.Env = v.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), errb.String(), fmt.Errorf("banger %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), errb.String(), nil
}

func (v *vmBench) mustRun(args ...string) string {
	v.b.Helper()
	out, err := v.run(args...)
	if err != nil {
		v.b.Fatal(err)
	}
	return out
}

// create runs `banger vm create --name name --json [flags]` and returns
// its wall time and the VM.
func (v *vmBench) create(name string, flags ...string) (time.Duration, api.VM) {
	v.b.Helper()
	console := followConsole(v.socket, name)
	start := time.Now()
	out, err := v.run(append([]string{"vm", "create", "--name", name, "--json"}, flags...)...)
	d := time.Since(start)
	log := console()
	if err != nil {
		v.b.Fatalf("%v\nconsole:\n%s", err, lastBytes(log, 4000))
	}
	var vm api.VM
	if err := json.Unmarshal([]byte(out), &vm); err != nil || vm.State != "running" {
		v.b.Fatalf("vm create %s: %v %+v\n%s", name, err, vm, out)
	}
	return d, vm
}

// createStages returns the stage durations (ms) and the whole daemon-side
// duration ("operation") of the create operation of the VM name.
func (v *vmBench) createStages(name string) map[string]float64 {
	v.b.Helper()
	var ops []api.Operation
	if err := json.Unmarshal([]byte(v.mustRun("operation", "list", "--json")), &ops); err != nil {
		v.b.Fatal(err)
	}
	for _, op := range ops {
		if op.Kind != api.KindVMCreate || op.Target != name || op.Finished == nil {
			continue
		}
		st := map[string]float64{"operation": float64(op.Finished.Sub(op.Created).Microseconds()) / 1000}
		for _, s := range op.Stages {
			st[s.Name] = s.DurationMS
		}
		return st
	}
	v.b.Fatalf("no finished create operation for %s in %+v", name, ops)
	return nil
}

// enginePIDs lists the QEMU processes started under the benchmark's
// directory.
func (v *vmBench) enginePIDs() []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte("qemu-system")) && bytes.Contains(b, []byte(v.dir)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// bareQEMU boots, with no banger in the way, the machine banger boots:
// the argv the engine recorded for a VM (engine.argv), in a directory of
// its own with a fresh qcow2 overlay over the same image root.
type bareQEMU struct {
	argv   []string // as recorded
	refDir string   // the recorded VM's instance directory, in argv
	rootfs string   // the image's root filesystem, the overlay's base
}

// newBareQEMU boots one VM through banger to record its argv, and deletes
// it.
func newBareQEMU(v *vmBench) *bareQEMU {
	v.b.Helper()
	// Booted, not restored: the argv of a boot.
	_, vm := v.create("ref", "--cold")
	raw, err := os.ReadFile(filepath.Join(vm.InstanceDir, "engine.argv"))
	if err != nil {
		v.b.Fatal(err)
	}
	q := &bareQEMU{refDir: vm.InstanceDir, rootfs: filepath.Join(v.state, "images", api.TinyImage, "rootfs.ext4")}
	if err := json.Unmarshal(raw, &q.argv); err != nil {
		v.b.Fatal(err)
	}
	v.mustRun("vm", "delete", "--force", "ref")
	for _, f := range []string{"vmlinux", "initrd"} {
		p := filepath.Join(v.state, "images", api.TinyImage, f)
		if _, err := os.Stat(p); err != nil && f == "initrd" {
			continue // a built kernel boots without one
		}
		if !slices.Contains(q.argv, p) {
			v.b.Fatalf("the recorded argv does not boot %s: %q", p, q.argv)
		}
	}
	return q
}

// boot makes an overlay in dir (which must exist and be empty), starts
// QEMU there as the engine does (same argv, its sockets bound first and
// passed as fds 3 and 4, its own session), and waits for the agent's
// Hello. It returns the overlay's time and the boot's (QEMU start to the
// Hello), and kills QEMU.
func (q *bareQEMU) boot(b *testing.B, dir string) (overlay, boot time.Duration) {
	b.Helper()
	disk := filepath.Join(dir, "disk.qcow2")
	start := time.Now()
	if err := runErr(exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", q.rootfs, "-F", "raw", disk)); err != nil {
		b.Fatal(err)
	}
	overlay = time.Since(start)

	start = time.Now()
	ctx, stop := startBareQEMU(b, q.argv, q.refDir, dir)
	defer stop()
	if err := waitHello(ctx, filepath.Join(dir, "agent.sock")); err != nil {
		console, _ := os.ReadFile(filepath.Join(dir, "console.log"))
		qlog, _ := os.ReadFile(filepath.Join(dir, "qemu.log"))
		b.Fatalf("bare qemu: %v\nqemu.log: %s\nconsole:\n%s", err, qlog, lastBytes(string(console), 4000))
	}
	return overlay, time.Since(start)
}

// startBareQEMU starts QEMU in dir as the engine does: the recorded argv
// with refDir made dir, its sockets bound first and passed as fds 3 and
// 4 (and 5 for a user-mode VM's network card, which nothing serves
// here), its own session, its output in dir/qemu.log. The context ends
// when QEMU exits or after vmBenchBoot; stop kills QEMU and waits for it.
func startBareQEMU(b *testing.B, recorded []string, refDir, dir string) (ctx context.Context, stop func()) {
	b.Helper()
	argv := make([]string, len(recorded))
	for i, a := range recorded {
		argv[i] = strings.ReplaceAll(a, refDir, dir)
	}
	var files []*os.File
	socks := []string{"qmp.sock", "agent.sock"}
	if slices.ContainsFunc(argv, func(a string) bool { return strings.HasPrefix(a, "stream,") }) {
		socks = append(socks, "net.sock")
	}
	for _, s := range socks {
		f, err := listenUnixFile(filepath.Join(dir, s))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
	}
	logf, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	cmd := &exec.Cmd{Path: argv[0], Args: argv, Dir: dir, Stdout: logf, Stderr: logf, ExtraFiles: files,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true}}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	ctx, cancel := context.WithTimeout(context.Background(), vmBenchBoot)
	go func() {
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, func() {
		cancel()
		cmd.Process.Kill()
		<-exited
	}
}

// listenUnixFile binds a Unix socket and returns its listening fd for a
// child to inherit; the socket file stays when it is closed.
func listenUnixFile(path string) (*os.File, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	defer ln.Close()
	return ln.File()
}

// waitHello does the host's side of the agent's handshake on the socket:
// it writes a reset frame and reads until the Hello line that echoes its
// nonce. It does no more: no session.
func waitHello(ctx context.Context, socket string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	var nonce [8]byte
	rand.Read(nonce[:])
	frame := agentlink.ResetFrame(nonce)
	want, _ := agentlink.ParseReset(frame)
	if _, err := conn.Write(frame); err != nil {
		return err
	}
	br := bufio.NewReader(conn)
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("no Hello: %w", ctx.Err())
			}
			return fmt.Errorf("no Hello: %w", err)
		}
		i := bytes.Index(line, []byte(agentlink.HelloPrefix))
		if i < 0 {
			continue
		}
		var h agentlink.Hello
		if json.Unmarshal(line[i:], &h) == nil && h.Nonce == want && h.Ready {
			return nil
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func medianMS(ds []time.Duration) float64 { return median(ds) / 1e6 }

// reportStages reports the median of each create stage, in ms.
func reportStages(b *testing.B, stages []map[string]float64) {
	names := map[string][]float64{}
	for _, st := range stages {
		for k, v := range st {
			names[k] = append(names[k], v)
		}
	}
	for k, vs := range names {
		slices.Sort(vs)
		b.ReportMetric(vs[len(vs)/2], strings.ReplaceAll(k, " ", "-")+"-p50-ms")
	}
}

// BenchmarkVMCreateToReady is `banger vm create` (a new process, as a
// user runs it) until it exits with the VM ready; the delete is not
// timed. It reports the create operation's stages (medians, from
// operation list), to show where the time goes.
func BenchmarkVMCreateToReady(b *testing.B) {
	v := newVMBench(b)
	var durs []time.Duration
	var stages []map[string]float64
	i := 0
	for b.Loop() {
		name := "c" + strconv.Itoa(i)
		d, _ := v.create(name)
		durs = append(durs, d)
		b.StopTimer()
		stages = append(stages, v.createStages(name))
		v.mustRun("vm", "delete", "--force", name)
		b.StartTimer()
		i++
	}
	b.ReportMetric(medianMS(durs), "p50-ms")
	reportStages(b, stages)
}

// BenchmarkBareQEMUToReady is qemu-system-x86_64 with the argv banger
// recorded for a VM of the same image, from its start until the agent's
// Hello; the overlay (qemu-img create) is made before, untimed, and
// reported as overlay-p50-ms.
func BenchmarkBareQEMUToReady(b *testing.B) {
	v := newVMBench(b)
	q := newBareQEMU(v)
	var boots, overlays []time.Duration
	i := 0
	for b.Loop() {
		b.StopTimer()
		dir := filepath.Join(v.dir, "bare"+strconv.Itoa(i))
		if err := os.Mkdir(dir, 0o700); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		overlay, boot := q.boot(b, dir)
		boots, overlays = append(boots, boot), append(overlays, overlay)
		b.StopTimer()
		os.RemoveAll(dir)
		b.StartTimer()
		i++
	}
	b.ReportMetric(medianMS(boots), "p50-ms")
	b.ReportMetric(medianMS(overlays), "overlay-p50-ms")
}

// BenchmarkVMBootInterleaved runs one `banger vm create` and one bare
// QEMU boot per iteration, in alternating order, so both see the same
// machine, and reports their medians and the target ratio:
//
//	create/bare   create to ready ÷ bare QEMU start to Hello (target ≤ 1.15)
//
// also create/bare+overlay (the bare boot with its qemu-img create counted)
// and the create operation's stages.
func BenchmarkVMBootInterleaved(b *testing.B) {
	v := newVMBench(b)
	q := newBareQEMU(v)
	var creates, boots, overlays []time.Duration
	var stages []map[string]float64
	i := 0
	for b.Loop() {
		for k := range 2 {
			if (i+k)%2 == 0 {
				name := "c" + strconv.Itoa(i)
				d, _ := v.create(name)
				creates = append(creates, d)
				stages = append(stages, v.createStages(name))
				v.mustRun("vm", "delete", "--force", name)
			} else {
				dir := filepath.Join(v.dir, "bare"+strconv.Itoa(i))
				if err := os.Mkdir(dir, 0o700); err != nil {
					b.Fatal(err)
				}
				overlay, boot := q.boot(b, dir)
				boots, overlays = append(boots, boot), append(overlays, overlay)
				os.RemoveAll(dir)
			}
		}
		i++
	}
	for j := range min(len(creates), len(boots)) {
		b.Logf("iteration %d: create %.0f ms (wait for agent %.0f), bare %.0f ms (+ overlay %.0f)",
			j, ms(creates[j]), stages[j]["wait for agent"], ms(boots[j]), ms(overlays[j]))
	}
	c, bare, ov := medianMS(creates), medianMS(boots), medianMS(overlays)
	b.ReportMetric(c, "create-p50-ms")
	b.ReportMetric(bare, "bare-p50-ms")
	b.ReportMetric(ov, "overlay-p50-ms")
	b.ReportMetric(c/bare, "create/bare")
	b.ReportMetric(c/(bare+ov), "create/bare+overlay")
	// The per-iteration ratio's median: less swayed by drift between
	// iterations than the ratio of medians.
	var ratios []float64
	for j := range min(len(creates), len(boots)) {
		ratios = append(ratios, float64(creates[j])/float64(boots[j]))
	}
	slices.Sort(ratios)
	b.ReportMetric(ratios[len(ratios)/2], "create/bare-paired-p50")
	reportStages(b, stages)
}

// BenchmarkPingWhile4VMsBoot measures the daemon's ping round trip (an
// in-process rpc.Client, a new connection per call, as every client
// makes) while 4 `banger vm create` run at once; one ping every 5 ms
// from before the creates start until the last one is ready. The VMs are
// deleted untimed. It reports p50, p99 and max in ms (target: p99 ≤ 20),
// and the same of an idle daemon, measured first, as idle-*.
func BenchmarkPingWhile4VMsBoot(b *testing.B) {
	v := newVMBench(b)
	c := &rpc.Client{Socket: v.socket}
	pingOnce := func() (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		err := c.Call(ctx, api.MethodPing, nil, nil)
		return time.Since(start), err
	}
	var idle []time.Duration
	for range 1000 {
		d, err := pingOnce()
		if err != nil {
			b.Fatal(err)
		}
		idle = append(idle, d)
		time.Sleep(5 * time.Millisecond)
	}

	var lat []time.Duration
	var pingErr error
	round := 0
	for b.Loop() {
		stop := make(chan struct{})
		pinged := make(chan struct{})
		go func() {
			defer close(pinged)
			for {
				select {
				case <-stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
				d, err := pingOnce()
				if err != nil {
					pingErr = err
					return
				}
				lat = append(lat, d)
			}
		}()
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		var names []string
		for k := range 4 {
			name := fmt.Sprintf("p%d-%d", round, k)
			names = append(names, name)
			wg.Add(1)
			go func() {
				defer wg.Done()
				console := followConsole(v.socket, name)
				_, err := v.run("vm", "create", "--name", name)
				if log := console(); err != nil {
					errs <- fmt.Errorf("%v\nconsole:\n%s", err, lastBytes(log, 4000))
				}
			}()
		}
		wg.Wait()
		close(stop)
		<-pinged
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		if pingErr != nil {
			b.Fatal(pingErr)
		}
		b.StopTimer()
		for _, n := range names {
			v.mustRun("vm", "delete", "--force", n)
		}
		b.StartTimer()
		round++
	}
	report := func(prefix string, ds []time.Duration) {
		s := slices.Clone(ds)
		slices.Sort(s)
		b.ReportMetric(ms(s[len(s)/2]), prefix+"p50-ms")
		b.ReportMetric(ms(s[len(s)*99/100]), prefix+"p99-ms")
		b.ReportMetric(ms(s[len(s)-1]), prefix+"max-ms")
	}
	report("", lat)
	b.ReportMetric(float64(len(lat)), "pings")
	report("idle-", idle)
}

// BenchmarkIdleDaemonRSS reads an idle daemon's VmRSS (target ≤ 30 MiB).
// Each iteration starts a new daemon on the benchmark's state (the
// default image is built already) and reads it twice: after a ping and a
// second of idling (fresh-MiB), and after one VM created, booted and
// deleted and two seconds of idling (after-vm-MiB, the figure to hold
// against the target; its anonymous and file-backed parts as
// after-vm-anon-MiB and after-vm-file-MiB, the daemon's peak as
// after-vm-peak-MiB). Before the loop it reads the daemon that built the
// image, idle for five seconds (after-build-MiB; its peak during the
// build as after-build-peak-MiB).
func BenchmarkIdleDaemonRSS(b *testing.B) {
	v := newVMBench(b)
	// The build's buffers (~200 MiB: the kernel decompressed in memory,
	// the initramfs) go back to the system as the build ends
	// (imagestore.Options.Built); the wait lets what the create did
	// after it settle.
	time.Sleep(5 * time.Second)
	built := procStatusMiB(b, v.pid)
	v.stopDaemon()

	var fresh, afterVM, anon, file, peak []float64
	i := 0
	for b.Loop() {
		v.startDaemon()
		if _, err := v.ping(); err != nil {
			b.Fatal(err)
		}
		time.Sleep(time.Second)
		fresh = append(fresh, procStatusMiB(b, v.pid)["VmRSS"])
		name := "r" + strconv.Itoa(i)
		v.create(name)
		v.mustRun("vm", "delete", "--force", name)
		time.Sleep(2 * time.Second)
		st := procStatusMiB(b, v.pid)
		afterVM, anon, file = append(afterVM, st["VmRSS"]), append(anon, st["RssAnon"]), append(file, st["RssFile"])
		peak = append(peak, st["VmHWM"])
		v.stopDaemon()
		i++
	}
	med := func(xs []float64) float64 {
		s := slices.Clone(xs)
		slices.Sort(s)
		return s[len(s)/2]
	}
	b.ReportMetric(med(fresh), "fresh-MiB")
	b.ReportMetric(med(afterVM), "after-vm-MiB")
	b.ReportMetric(med(anon), "after-vm-anon-MiB")
	b.ReportMetric(med(file), "after-vm-file-MiB")
	b.ReportMetric(med(peak), "after-vm-peak-MiB")
	b.ReportMetric(built["VmRSS"], "after-build-MiB")
	b.ReportMetric(built["VmHWM"], "after-build-peak-MiB")
}

// procStatusMiB reads the kB fields of /proc/PID/status, in MiB.
func procStatusMiB(b *testing.B, pid int) map[string]float64 {
	b.Helper()
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(data), "\n") {
		k, val, ok := strings.Cut(line, ":")
		f := strings.Fields(val)
		if !ok || len(f) != 2 || f[1] != "kB" {
			continue
		}
		if n, err := strconv.ParseFloat(f[0], 64); err == nil {
			out[k] = n / 1024
		}
	}
	if _, ok := out["VmRSS"]; !ok {
		b.Fatalf("no VmRSS in /proc/%d/status", pid)
	}
	return out
}
