package e2e_test

// Sandbox benchmarks (issue 4): banger's main job against a bare boot,
// the exec round trip on a running VM, and the workspace copy.
//
//	go test -run '^$' -bench 'VMRun|Exec|Workspace' -benchtime 5x ./e2e/
//
// Targets:
//
//   - `banger vm run -- true` wall time ÷ a bare qemu-system-x86_64 boot
//     of the same kernel and image to the agent's readiness ≤ 1.15
//     (BenchmarkVMRunInterleaved runs both in every iteration).
//   - `banger vm exec VM -- true` on a running VM: median ≤ 50 ms
//     (BenchmarkExecRoundTrip).
//   - The workspace copy of a 50 MiB, 5,000-file repository: throughput
//     recorded (BenchmarkWorkspaceCopy).

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"
)

// BenchmarkVMRunInterleaved runs one `banger vm run -- true` (a new
// process, as a user runs it, until it exits with the command's status)
// and one bare QEMU boot per iteration, alternating which goes first, and
// reports run/bare. The VM is deleted untimed; `--rm` would add the
// delete, which is reported apart as rm-p50-ms.
func BenchmarkVMRunInterleaved(b *testing.B) {
	v := newVMBench(b)
	q := newBareQEMU(v)
	var runs, boots, rms []time.Duration
	i := 0
	for b.Loop() {
		for k := range 2 {
			if (i+k)%2 == 0 {
				name := "r" + strconv.Itoa(i)
				start := time.Now()
				v.mustRun("vm", "run", "--name", name, "--", "true")
				runs = append(runs, time.Since(start))
				start = time.Now()
				v.mustRun("vm", "delete", name)
				rms = append(rms, time.Since(start))
			} else {
				dir := filepath.Join(v.dir, "bare"+strconv.Itoa(i))
				if err := os.Mkdir(dir, 0o700); err != nil {
					b.Fatal(err)
				}
				_, boot := q.boot(b, dir)
				boots = append(boots, boot)
				os.RemoveAll(dir)
			}
		}
		i++
	}
	var ratios []float64
	for j := range min(len(runs), len(boots)) {
		b.Logf("iteration %d: vm run -- true %.0f ms, bare %.0f ms", j, ms(runs[j]), ms(boots[j]))
		ratios = append(ratios, float64(runs[j])/float64(boots[j]))
	}
	r, bare := medianMS(runs), medianMS(boots)
	b.ReportMetric(r, "run-p50-ms")
	b.ReportMetric(bare, "bare-p50-ms")
	b.ReportMetric(medianMS(rms), "rm-p50-ms")
	b.ReportMetric(r/bare, "run/bare")
	slices.Sort(ratios)
	b.ReportMetric(ratios[len(ratios)/2], "run/bare-paired-p50")
}

// BenchmarkExecRoundTrip is `banger vm exec box -- true` on a running VM:
// the client process, the daemon's stream socket, the agent's fork and
// exec in the guest, and the exit status back.
func BenchmarkExecRoundTrip(b *testing.B) {
	v := newVMBench(b)
	v.mustRun("vm", "create", "--name", "box")
	var durs []time.Duration
	for b.Loop() {
		start := time.Now()
		v.mustRun("vm", "exec", "box", "--", "true")
		durs = append(durs, time.Since(start))
	}
	slices.Sort(durs)
	b.ReportMetric(medianMS(durs), "p50-ms")
	b.ReportMetric(ms(durs[len(durs)*99/100]), "p99-ms")
}

// copiedLine is vm run's summary of the workspace copy on stderr.
var copiedLine = regexp.MustCompile(`copied (\d+) files \(([^)]*)\) to \S+ in ([0-9.]+) ?(ms|s)`)

// BenchmarkWorkspaceCopy copies a git work tree of 5,000 files, 50 MiB in
// all (10 KiB of random bytes each, 50 directories), into a running VM
// with `vm run -d REPO` and reports the copy's time and throughput, from
// banger's own summary line (the boot is not counted).
func BenchmarkWorkspaceCopy(b *testing.B) {
	v := newVMBench(b)
	repo := filepath.Join(v.dir, "bigrepo")
	blob := make([]byte, 10<<10)
	for d := range 50 {
		dir := filepath.Join(repo, fmt.Sprintf("d%02d", d))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		for f := range 100 {
			for k := range blob {
				blob[k] = byte(d*7 + f*13 + k)
			}
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d.bin", f)), blob, 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, args := range [][]string{{"init", "-q"}, {"add", "."}, {"-c", "user.name=b", "-c", "user.email=b@example.com", "commit", "-qm", "big"}} {
		if out, err := exec.Command("git", append([]string{"-C", repo}, args...)...).CombinedOutput(); err != nil {
			b.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
	var copies []time.Duration
	i := 0
	for b.Loop() {
		name := "w" + strconv.Itoa(i)
		_, stderr, err := v.runBoth("vm", "run", "-d", "--name", name, repo)
		if err != nil {
			b.Fatal(err)
		}
		m := copiedLine.FindStringSubmatch(stderr)
		if m == nil || m[1] != "5000" {
			b.Fatalf("no copy summary for 5000 files in:\n%s", stderr)
		}
		n, _ := strconv.ParseFloat(m[3], 64)
		d := time.Duration(n * float64(time.Millisecond))
		if m[4] == "s" {
			d = time.Duration(n * float64(time.Second))
		}
		copies = append(copies, d)
		b.StopTimer()
		v.mustRun("vm", "delete", name)
		b.StartTimer()
		i++
	}
	p50 := medianMS(copies)
	b.ReportMetric(p50, "copy-p50-ms")
	b.ReportMetric(50/(p50/1000), "MiB/s")
	b.ReportMetric(5000/(p50/1000), "files/s")
}
