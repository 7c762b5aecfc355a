package e2e_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
)

// BenchmarkSoak is banger used the way a person or an agent uses it over
// an afternoon, outside CI: for BANGER_SOAK (an hour or more), after an
// idle gap drawn at random from 0.1 s to 10 minutes (log-uniform: many
// short pauses, some long ones), one each of `vm run --rm -- true` and
// `vm exec` on a VM that stays, user-mode and bridged, in a random order.
// It reports the runs, the failures (the goal: none), the warm/cold split
// and the latencies of each kind, and the daemon's RSS and open fds at the
// start and the end (the goal: no growth). BANGER_SOAK_MAX_GAP shortens
// the longest gap for a quick try; BANGER_SOAK_REPORT names a file for
// the markdown table.
//
//	BANGER_SOAK=70m go test -run '^$' -bench Soak -benchtime 1x -timeout 0 ./e2e/
func BenchmarkSoak(b *testing.B) {
	total, err := time.ParseDuration(os.Getenv("BANGER_SOAK"))
	if err != nil || total <= 0 {
		b.Skip("a soak of an hour or more: set BANGER_SOAK=1h")
	}
	maxGap := 10 * time.Minute
	if g, err := time.ParseDuration(os.Getenv("BANGER_SOAK_MAX_GAP")); err == nil && g > 0 {
		maxGap = g
	}
	s, ns, _ := bridgedSandbox(b)
	s.bridgedDaemon(ns)
	s.banger("vm", "run", "--rm", "--", "true").want(b, 0)
	s.banger("vm", "run", "--rm", "--network", "bridge", "--", "true").want(b, 0)
	s.banger("vm", "create", "--name", "stay-user").want(b, 0)
	s.banger("vm", "create", "--name", "stay-bridge", "--network", "bridge").want(b, 0)
	var ping api.PingResult
	if err := s.call(api.MethodPing, nil, &ping); err != nil {
		b.Fatal(err)
	}
	startRSS, startFDs := procRSS(ping.PID), procFDs(ping.PID)

	kinds := []soakKind{
		{name: "vm run, user", args: []string{"vm", "run", "--rm", "--", "true"}},
		{name: "vm run, bridged", args: []string{"vm", "run", "--rm", "--network", "bridge", "--", "true"}},
		{name: "vm exec, user", args: []string{"vm", "exec", "stay-user", "--", "true"}},
		{name: "vm exec, bridged", args: []string{"vm", "exec", "stay-bridge", "--", "true"}},
	}
	var gaps []time.Duration
	var failures, fallbacks []string
	b.ResetTimer()
	deadline := time.Now().Add(total)
	for time.Now().Before(deadline) {
		gap := time.Duration(math.Exp(rand.Float64()*math.Log(float64(maxGap)/float64(100*time.Millisecond)))) * 100 * time.Millisecond
		gap = min(gap, time.Until(deadline))
		gaps = append(gaps, gap)
		time.Sleep(gap)
		for _, i := range rand.Perm(len(kinds)) {
			k := &kinds[i]
			start := time.Now()
			r := s.runIn(nil, 5*time.Minute, bangerBin, k.args...)
			took := time.Since(start)
			k.took = append(k.took, took)
			for _, line := range strings.Split(r.stderr, "\n") {
				if strings.HasPrefix(line, "fall back to ") {
					fallbacks = append(fallbacks, k.name+": "+line)
				}
			}
			switch {
			case r.code != 0:
				k.failed++
				failures = append(failures, fmt.Sprintf("%s after a %s gap: exit %d: %s", k.name, gap.Round(time.Second), r.code, lastLine(r.stderr)))
			case strings.Contains(r.stderr, "take standby done"):
				k.standby++
			case strings.Contains(r.stderr, "restore done"):
				k.restored++
			case strings.Contains(r.stderr, "wait for agent done"):
				k.booted++
			}
		}
	}
	b.StopTimer()
	endRSS, endFDs := procRSS(ping.PID), procFDs(ping.PID)

	var rows strings.Builder
	fmt.Fprintf(&rows, "soak of %s, %d rounds after idle gaps of 0.1 s to %s (median %s, %d over 1 min, %d over 5 min)\n\n",
		total, len(gaps), maxGap, percentile(gaps, 0.5).Round(time.Second), countOver(gaps, time.Minute), countOver(gaps, 5*time.Minute))
	fmt.Fprintf(&rows, "| what | runs | failures | standby / restore / boot | p50 | p99 |\n|---|---|---|---|---|---|\n")
	runs, failed := 0, 0
	for _, k := range kinds {
		runs += len(k.took)
		failed += k.failed
		split := "—"
		if strings.HasPrefix(k.name, "vm run") {
			split = fmt.Sprintf("%d / %d / %d", k.standby, k.restored, k.booted)
		}
		fmt.Fprintf(&rows, "| %s | %d | %d | %s | %s | %s |\n", k.name, len(k.took), k.failed, split,
			fmtMS(percentile(k.took, 0.5)), fmtMS(percentile(k.took, 0.99)))
	}
	fmt.Fprintf(&rows, "\ndaemon (pid %d): RSS %d → %d KiB, open fds %d → %d\n", ping.PID, startRSS, endRSS, startFDs, endFDs)
	for _, f := range failures {
		fmt.Fprintf(&rows, "\n- failed: %s", f)
	}
	for _, f := range fallbacks {
		fmt.Fprintf(&rows, "\n- %s", f)
	}
	b.Log("\n" + rows.String())
	if path := os.Getenv("BANGER_SOAK_REPORT"); path != "" {
		os.WriteFile(path, []byte(rows.String()), 0o644)
	}
	b.ReportMetric(float64(runs), "runs")
	b.ReportMetric(float64(failed), "failures")
	b.ReportMetric(float64(endRSS-startRSS), "rss-growth-KiB")
	b.ReportMetric(float64(endFDs-startFDs), "fd-growth")
	if failed > 0 {
		b.Errorf("%d of %d runs failed", failed, runs)
	}
	s.banger("vm", "delete", "stay-user").want(b, 0)
	s.banger("vm", "delete", "stay-bridge").want(b, 0)
}

// soakKind is one kind of command of the soak and what became of it.
type soakKind struct {
	name                      string
	args                      []string
	took                      []time.Duration
	failed                    int
	standby, restored, booted int
}

// procRSS is a process's resident memory in KiB (0 when unknown).
func procRSS(pid int) int {
	b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return n
		}
	}
	return 0
}

// procFDs counts a process's open file descriptors.
func procFDs(pid int) int {
	fds, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	return len(fds)
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(math.Ceil(p*float64(len(s))))-1)]
}

func countOver(ds []time.Duration, d time.Duration) int {
	n := 0
	for _, x := range ds {
		if x > d {
			n++
		}
	}
	return n
}

func fmtMS(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) + " ms" }

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
