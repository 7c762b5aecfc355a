package e2e_test

// Process-level benchmarks: what running banger costs as a whole process,
// the way a person or a script runs it, next to a peer anchor measured in
// the same run (containerd's ctr against a containerd of its own).
//
// Targets (from the issue): `banger ping` costs at most 1.2× `banger
// --version`, and no more than `ctr version` against a running containerd.
//
//	go test -run '^$' -bench Process -benchtime 200x -count 3 ./e2e/
//
// Each iteration starts the real process with exec.Command(...).Run() and
// checks that it succeeded. Besides ns/op (the mean), each benchmark
// reports its median as p50-ns/op: process start-up has a long tail on a
// shared machine.
//
// The ratios come from BenchmarkProcessInterleaved, which runs the four
// commands in turn in every iteration: on a shared machine the speed drifts
// by tens of percent over the seconds between two separate benchmarks, and
// only an interleaved measurement compares like with like.

import (
	"banger/internal/api"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bangerBenchEnv is the environment without banger's own variables and
// XDG directories, plus private XDG directories under dir. Its daemons
// save no warm snapshots: the benchmarks that compare boots with bare
// QEMU measure boots (bench_warm_test.go turns them back on).
func bangerBenchEnv(dir string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BANGER_") && !strings.HasPrefix(kv, "XDG_") {
			env = append(env, kv)
		}
	}
	return append(env, "XDG_RUNTIME_DIR="+filepath.Join(dir, "run"), "XDG_STATE_HOME="+filepath.Join(dir, "state"), "BANGER_AUTO_WARM=false",
		"BANGER_IMAGE="+api.TinyImage)
}

// benchTempDir is a short temporary directory (sockets live under it:
// 108-byte limit), removed when the benchmark ends.
func benchTempDir(b *testing.B, pattern string) string {
	b.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startServer starts a server process that logs to logPath, stops it with
// SIGTERM when the benchmark ends, and waits until ready succeeds.
func startServer(b *testing.B, cmd *exec.Cmd, logPath string, ready func() error) {
	b.Helper()
	logFile, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := ready()
		if err == nil {
			return
		}
		select {
		case <-done:
			log, _ := os.ReadFile(logPath)
			b.Fatalf("%s exited at start: %v\n%s", cmd.Path, cmd.ProcessState, log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			b.Fatalf("%s not ready within 30s: %v\n%s", cmd.Path, err, log)
		}
	}
}

// runErr runs cmd and returns its error with its output.
func runErr(cmd *exec.Cmd) error {
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// benchProcess times newCmd's process, one per iteration, and reports its
// median. It runs the command once untimed first, to check that it works
// and to warm the page cache.
func benchProcess(b *testing.B, newCmd func() *exec.Cmd) {
	b.Helper()
	if err := runErr(newCmd()); err != nil {
		b.Fatal(err)
	}
	var durs []time.Duration
	for b.Loop() {
		durs = append(durs, timeProcess(b, newCmd))
	}
	b.ReportMetric(median(durs), "p50-ns/op")
}

// timeProcess runs one process and returns how long it took, from start to
// reaped.
func timeProcess(b *testing.B, newCmd func() *exec.Cmd) time.Duration {
	cmd := newCmd()
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		b.Fatalf("%v: %v (a rerun: %v)", cmd.Args, err, runErr(newCmd()))
	}
	return d
}

func median(durs []time.Duration) float64 {
	s := slices.Clone(durs)
	slices.Sort(s)
	return float64(s[len(s)/2].Nanoseconds())
}

// bangerProcs returns the commands `banger --version` and, with a daemon,
// `banger --no-autostart ping` against a bangerd started for the benchmark
// (nil without).
func bangerProcs(b *testing.B, withDaemon bool) (version, ping func() *exec.Cmd) {
	b.Helper()
	dir := benchTempDir(b, "bgb")
	env := bangerBenchEnv(dir)
	for _, d := range []string{"run", "state"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			b.Fatal(err)
		}
	}
	cmd := func(args ...string) func() *exec.Cmd {
		return func() *exec.Cmd {
			c := exec.Command(bangerBin, args...)
			c.Env = env
			return c
		}
	}
	version = cmd("--version")
	if !withDaemon {
		return version, nil
	}
	// The client's default socket, $XDG_RUNTIME_DIR/banger/bangerd.sock.
	socket := filepath.Join(dir, "run", "banger", "bangerd.sock")
	daemon := exec.Command(bangerBin, "bangerd", "--socket", socket,
		"--state-dir", filepath.Join(dir, "state", "banger"), "--helper", "none")
	daemon.Env = env
	ping = cmd("--no-autostart", "ping")
	startServer(b, daemon, filepath.Join(dir, "bangerd.stderr"), func() error { return runErr(ping()) })
	return version, ping
}

// ctrProcs returns the commands `ctr --version` and, with a daemon, `ctr
// version` against a containerd started for the benchmark in a temporary
// directory (nil without). It skips the benchmark when ctr or containerd is
// not installed.
func ctrProcs(b *testing.B, withDaemon bool) (flag, version func() *exec.Cmd) {
	b.Helper()
	ctr, err := exec.LookPath("ctr")
	if err != nil {
		b.Skip("ctr is not on PATH (install Debian's containerd package): no peer anchor")
	}
	flag = func() *exec.Cmd { return exec.Command(ctr, "--version") }
	if !withDaemon {
		return flag, nil
	}
	containerd, err := exec.LookPath("containerd")
	if err != nil {
		b.Skip("containerd is not on PATH (install Debian's containerd package): no peer anchor")
	}
	dir := benchTempDir(b, "bgc")
	sock := filepath.Join(dir, "containerd.sock")
	// CRI needs what this kind of machine lacks and ctr version does not
	// use it; every address is private to this benchmark.
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = %q

[ttrpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc")
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	version = func() *exec.Cmd { return exec.Command(ctr, "--address", sock, "version") }
	startServer(b, exec.Command(containerd, "--config", cfgPath), filepath.Join(dir, "containerd.log"),
		func() error { return runErr(version()) })
	return flag, version
}

// BenchmarkProcessBangerVersionFlag is `banger --version`: the floor of a
// banger process (start-up, the CLI, one line out), the anchor of ping.
func BenchmarkProcessBangerVersionFlag(b *testing.B) {
	version, _ := bangerProcs(b, false)
	benchProcess(b, version)
}

// BenchmarkProcessBangerPing is `banger --no-autostart ping` against a
// bangerd started once for the benchmark.
func BenchmarkProcessBangerPing(b *testing.B) {
	_, ping := bangerProcs(b, true)
	benchProcess(b, ping)
}

// BenchmarkProcessCtrVersionFlag is `ctr --version`: the peer's floor.
func BenchmarkProcessCtrVersionFlag(b *testing.B) {
	flag, _ := ctrProcs(b, false)
	benchProcess(b, flag)
}

// BenchmarkProcessCtrVersion is `ctr version` against a containerd of its
// own: the peer's one round trip to its daemon, which banger ping must not
// be slower than.
func BenchmarkProcessCtrVersion(b *testing.B) {
	_, version := ctrProcs(b, true)
	benchProcess(b, version)
}

// BenchmarkProcessInterleaved runs `banger --version`, `banger ping`, `ctr
// --version` and `ctr version` once each per iteration, in an order that
// rotates, and reports the median of each and the target ratios of those
// medians:
//
//	ping/banger-version   banger ping ÷ banger --version (target ≤ 1.2)
//	ping/ctr-version      banger ping ÷ ctr version      (target ≤ 1)
//	ctr-version/ctr-flag  ctr version ÷ ctr --version    (the peer's own)
//
// Its ns/op is the time of one of each. Without ctr it reports the banger
// figures only.
func BenchmarkProcessInterleaved(b *testing.B) {
	type proc struct {
		name   string
		newCmd func() *exec.Cmd
	}
	bangerVersion, bangerPing := bangerProcs(b, true)
	procs := []proc{{"banger-version", bangerVersion}, {"ping", bangerPing}}
	_, errCtr := exec.LookPath("ctr")
	_, errContainerd := exec.LookPath("containerd")
	if errCtr == nil && errContainerd == nil {
		ctrFlag, ctrVersion := ctrProcs(b, true)
		procs = append(procs, proc{"ctr-flag", ctrFlag}, proc{"ctr-version", ctrVersion})
	} else {
		b.Log("ctr or containerd is not on PATH: no peer anchor")
	}
	for _, p := range procs {
		if err := runErr(p.newCmd()); err != nil {
			b.Fatal(err)
		}
	}
	durs := make([][]time.Duration, len(procs))
	round := 0
	for b.Loop() {
		for k := range procs {
			i := (round + k) % len(procs)
			durs[i] = append(durs[i], timeProcess(b, procs[i].newCmd))
		}
		round++
	}
	p50 := map[string]float64{}
	for i, p := range procs {
		p50[p.name] = median(durs[i])
		b.ReportMetric(p50[p.name], p.name+"-p50-ns")
	}
	ratio := func(num, den string) {
		if p50[num] > 0 && p50[den] > 0 {
			b.ReportMetric(p50[num]/p50[den], num+"/"+den)
		}
	}
	ratio("ping", "banger-version")
	ratio("ping", "ctr-version")
	ratio("ctr-version", "ctr-flag")
}
