package agentlink_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/applets/daemon/engine"
	"banger/internal/agentlink"
	"banger/internal/layout"
	"banger/rpc"
)

// bootWait bounds a boot to the agent's Hello: 2-5 s under TCG here, more
// on a loaded machine; a hang fails the test instead of stalling it.
const bootWait = 60 * time.Second

func waitReady(t *testing.T, v *vm) *agentlink.Link {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bootWait)
	defer cancel()
	// A VM that dies while booting ends the wait at once.
	go func() {
		select {
		case <-v.Inst.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	start := time.Now()
	link, err := agentlink.Wait(ctx, v.Inst.AgentSocket())
	if err != nil {
		t.Fatalf("wait for the agent: %v (qemu running: %v)", err, v.Inst.Running())
	}
	t.Cleanup(func() { link.Close() })
	t.Logf("agent ready %s after launch: %+v", time.Since(start).Round(time.Millisecond), link.Hello())
	return link
}

func TestBootPingPowerOff(t *testing.T) {
	g := needGuest(t)
	v := launch(t, g, "box-one")
	v.dumpConsoleOnFailure(t)
	if v.Inst.Accel != engine.AccelTCG && v.Inst.Accel != engine.AccelKVM {
		t.Errorf("accel %q", v.Inst.Accel)
	}
	link := waitReady(t, v)
	h := link.Hello()
	if h.Agent != agentlink.AgentName || !h.Ready || h.BootID == "" || h.Hostname != "box-one" {
		t.Errorf("hello = %+v", h)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := link.Ping(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p.BootID != h.BootID || p.Hostname != "box-one" || p.UptimeMS <= 0 || p.Version != h.Version {
		t.Errorf("ping = %+v, hello %+v", p, h)
	}
	// Calls are independent streams: several at once.
	errs := make(chan error, 4)
	for range 4 {
		go func() { _, err := link.Ping(ctx); errs <- err }()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	// An unknown method is the agent's rpc error, not a broken link.
	if err := link.Call(ctx, "agent.nope", nil, nil); err == nil || !strings.Contains(err.Error(), "unknown_method") {
		t.Errorf("unknown method: %v", err)
	}

	console := v.console(t)
	for _, want := range []string{"Linux version", "initramfs done; switching root", "agent up; waiting for the host", "network up"} {
		if !strings.Contains(console, want) {
			t.Errorf("console log lacks %q", want)
		}
	}

	start := time.Now()
	if err := link.PowerOff(ctx); err != nil {
		t.Fatalf("power off: %v", err)
	}
	if err := v.Inst.Wait(ctx); err != nil {
		t.Errorf("qemu exit after power-off: %v", err)
	}
	t.Logf("powered off; qemu exited %s after the request", time.Since(start).Round(time.Millisecond))
	if c := v.console(t); os.Getenv("BANGER_TEST_CONSOLE") != "" {
		t.Log(c)
	}
	if err := engine.CleanRuntime(v.Dir); err != nil {
		t.Error(err)
	}
}

func TestBootKill(t *testing.T) {
	g := needGuest(t)
	v := launch(t, g, "box-kill")
	v.dumpConsoleOnFailure(t)
	link := waitReady(t, v)
	// A second VM in the same directory is refused, and the first one
	// is untouched.
	if _, err := v.Engine.Launch(context.Background(), v.Spec); rpc.CodeOf(err) != rpc.CodeConflict {
		t.Errorf("second Launch in %s = %v, want conflict", v.Dir, err)
	}
	if _, err := link.Ping(context.Background()); err != nil {
		t.Errorf("ping after the refused launch: %v", err)
	}
	start := time.Now()
	if err := v.Inst.Kill(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed in %s", time.Since(start).Round(time.Millisecond))
	if v.Inst.Running() {
		t.Error("still running after Kill")
	}
	select {
	case <-link.Done():
	case <-time.After(5 * time.Second):
		t.Error("the link did not notice the VM's end")
	}
	for _, f := range []string{layout.PID, layout.QMPSocket, layout.AgentSocket} {
		if _, err := os.Stat(filepath.Join(v.Dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", f, err)
		}
	}
	if _, err := engine.Attach(context.Background(), v.Dir); !errors.Is(err, engine.ErrNotRunning) {
		t.Errorf("Attach after Kill = %v, want ErrNotRunning", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := agentlink.Wait(ctx, v.Inst.AgentSocket()); err == nil {
		t.Error("Wait on a dead VM's socket succeeded")
	}
}

// TestAttachAfterDaemonRestart: a "daemon" process launches a VM, waits
// for its agent and dies with the link open. The VM runs on, and a new
// daemon finds it from its instance directory alone: same QEMU, same
// guest boot, agent reachable, and it can stop it.
func TestAttachAfterDaemonRestart(t *testing.T) {
	g := needGuest(t)
	spec := newSpec(t, g, "box-again")
	specJSON, _ := json.Marshal(spec)
	daemon := exec.Command(os.Args[0], "-test.run=^$")
	daemon.Env = append(os.Environ(), launcherEnv+"="+string(specJSON))
	daemon.Stderr = os.Stderr
	out, err := daemon.Output()
	if err != nil {
		t.Fatalf("the first daemon: %v", err)
	}
	var first launched
	if err := json.Unmarshal(out, &first); err != nil {
		t.Fatalf("the first daemon said %q: %v", out, err)
	}
	t.Logf("the first daemon launched qemu %d (boot %s) and exited", first.PID, first.BootID)

	ctx, cancel := context.WithTimeout(context.Background(), bootWait)
	defer cancel()
	inst, err := engine.Attach(ctx, spec.Dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if inst.Running() {
			inst.Kill(context.Background())
		}
	})
	v := &vm{Dir: spec.Dir, Inst: inst}
	v.dumpConsoleOnFailure(t)
	if inst.PID != first.PID || inst.Accel == "" {
		t.Errorf("attached pid %d accel %q, launched pid %d", inst.PID, inst.Accel, first.PID)
	}
	st, err := inst.Status(ctx)
	if err != nil || !st.Running || st.Status != "running" {
		t.Errorf("status = %+v, %v", st, err)
	}
	start := time.Now()
	link, err := agentlink.Wait(ctx, inst.AgentSocket())
	if err != nil {
		t.Fatal(err)
	}
	defer link.Close()
	t.Logf("re-attached to the agent in %s", time.Since(start).Round(time.Millisecond))
	if link.Hello().BootID != first.BootID {
		t.Errorf("boot id %s after re-attach, was %s: the guest rebooted?", link.Hello().BootID, first.BootID)
	}
	if p, err := link.Ping(ctx); err != nil || p.BootID != first.BootID {
		t.Errorf("ping after re-attach = %+v, %v", p, err)
	}

	// Stop presses the power button through QMP; the agent powers off.
	start = time.Now()
	if err := inst.Stop(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped through the power button in %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(v.console(t), `"reason":"power button"`) {
		t.Error("the guest did not power off through its power button (Stop fell back to quit or kill)")
	}
	if _, err := engine.Attach(ctx, spec.Dir); !errors.Is(err, engine.ErrNotRunning) {
		t.Errorf("Attach after Stop = %v", err)
	}
}

// TestReconnectStorm reconnects many times in a row with no pause, the
// case where the guest may not notice that one host left before the next
// one came.
func TestReconnectStorm(t *testing.T) {
	g := needGuest(t)
	v := launch(t, g, "box-storm")
	v.dumpConsoleOnFailure(t)
	link := waitReady(t, v)
	bootID := link.Hello().BootID
	link.Close()
	ctx, cancel := context.WithTimeout(context.Background(), bootWait)
	defer cancel()
	for i := range 10 {
		l, err := agentlink.Wait(ctx, v.Inst.AgentSocket())
		if err != nil {
			t.Fatalf("reconnect %d: %v", i, err)
		}
		if l.Hello().BootID != bootID {
			t.Errorf("reconnect %d: boot id %s", i, l.Hello().BootID)
		}
		if i%2 == 0 {
			if _, err := l.Ping(ctx); err != nil {
				t.Errorf("reconnect %d: ping: %v", i, err)
			}
		}
		l.Close()
	}
	// How often the guest learned of a new host from its reset frame
	// rather than from the port closing: the case the handshake is for.
	t.Logf("links ended by a reset frame: %d of 11", strings.Count(v.console(t), "the host connected again"))
}
