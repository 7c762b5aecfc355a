package kernelbuild

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/applets/daemon/kernel"
)

// TestRunCancelKillsProcessGroup checks that a cancel stops a tool and
// everything it started (make's compilers), at once.
func TestRunCancelKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	pids := filepath.Join(dir, "pids")
	b := &Build{Dir: dir}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		// A parent that ignores SIGTERM, with two children of its own.
		done <- b.run(ctx, nil, "sh", "-c", `trap "" TERM; sleep 300 & echo $! >> pids; sleep 300 & echo $! >> pids; wait`)
	}()
	waitFor(t, func() bool { data, _ := os.ReadFile(pids); return strings.Count(string(data), "\n") == 2 })
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("run = %v, want context.Canceled", err)
		}
	case <-time.After(killWait + 5*time.Second):
		t.Fatal("run did not return after cancel")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cancel took %s", d)
	}
	data, _ := os.ReadFile(pids)
	for _, f := range strings.Fields(string(data)) {
		pid, _ := strconv.Atoi(f)
		waitFor(t, func() bool { return syscall.Kill(pid, 0) != nil })
	}
}

func TestRunFailureShowsOutput(t *testing.T) {
	b := &Build{Dir: t.TempDir()}
	var lines []string
	err := b.run(context.Background(), func(s string) { lines = append(lines, s) }, "sh", "-c", "echo one; echo two >&2; exit 3")
	if err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "two") {
		t.Errorf("run = %v, want exit status 3 and the output", err)
	}
	if len(lines) != 2 {
		t.Errorf("lines = %q", lines)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// needSource skips a test when this machine cannot build kernels.
func needSource(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("unpacks the kernel source (-short)")
	}
	src, err := FindSource(SourceGlob)
	if err != nil {
		t.Skip(err)
	}
	if err := CheckTools(); err != nil {
		t.Skip(err)
	}
	return src
}

// TestConfigureAppliesFragment configures the real source with banger's
// fragment (no compile: about 45 s on an idle 2-core machine, most of it
// unpacking; minutes on a busy one) and checks that every option of the
// fragment is set in .config as asked.
func TestConfigureAppliesFragment(t *testing.T) {
	src := needSource(t)
	b := &Build{Source: src, Dir: filepath.Join(t.TempDir(), "src"), Jobs: 2}
	ctx := context.Background()
	if err := b.Unpack(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Configure(ctx); err != nil {
		t.Fatal(err)
	}
	config, err := os.ReadFile(filepath.Join(b.Dir, ".config"))
	if err != nil {
		t.Fatal(err)
	}
	opts, err := kernel.ParseConfig(kernel.MicroVMFragment())
	if err != nil {
		t.Fatal(err)
	}
	set := map[string]string{}
	have, _ := kernel.ParseConfig(config)
	for _, o := range have {
		set[o.Name] = o.Value
	}
	for _, o := range opts {
		got, ok := set[o.Name]
		if o.Value == "n" && (!ok || got == "n") {
			continue
		}
		if got != o.Value {
			t.Errorf("%s=%s in the fragment, %q in .config", o.Name, o.Value, got)
		}
	}
}
