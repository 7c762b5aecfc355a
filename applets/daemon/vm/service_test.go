package vm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/applets/daemon/state"
	"banger/internal/api"
	"banger/rpc"
)

// A claim during a brief one (a guest's end being recorded) waits for it;
// during any other it is a conflict at once.
func TestClaimWaitsForABriefOne(t *testing.T) {
	s, _, _ := testService(t)
	release, err := s.claimBrief("box", "noticing that it exited")
	if err != nil {
		t.Fatal(err)
	}
	go func() { time.Sleep(100 * time.Millisecond); release() }()
	start := time.Now()
	second, err := s.claim("box", "being started")
	if err != nil || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("a claim during a brief one: %v after %s", err, time.Since(start))
	}
	if _, err := s.claim("box", "being stopped"); rpc.CodeOf(err) != rpc.CodeConflict || !strings.Contains(err.Error(), "being started") {
		t.Errorf("a claim during another: %v", err)
	}
	second()
}

// attachEngine's Attach waits for a release, counting how many wait at
// once: a guest that says no hello holds an attach for seconds.
type attachEngine struct {
	fakeEngine
	mu            sync.Mutex
	running, most int
	release       chan struct{}
}

func (e *attachEngine) Attach(ctx context.Context, dir, name string, user *UserNet) (Process, error) {
	e.mu.Lock()
	e.running++
	e.most = max(e.most, e.running)
	e.mu.Unlock()
	<-e.release
	e.mu.Lock()
	e.running--
	e.mu.Unlock()
	return nil, errors.New("not running")
}

// A restarted daemon attaches to its VMs a few at a time, not one after
// another, and no more than attachConcurrency at once.
func TestReconcileAttachesInParallel(t *testing.T) {
	s, _, _ := testService(t)
	e := &attachEngine{release: make(chan struct{})}
	s.engine = e
	ctx := context.Background()
	for i := range 3 * attachConcurrency {
		name := fmt.Sprintf("vm%d", i)
		if err := s.db.CreateVM(ctx, state.VM{ID: "vm-" + name, Name: name, Image: api.DefaultImage, State: state.VMRunning, InstanceDir: t.TempDir()}); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- s.reconcile(ctx, nil) }()
	waitUntil := time.Now().Add(10 * time.Second)
	for {
		e.mu.Lock()
		n := e.running
		e.mu.Unlock()
		if n == attachConcurrency || time.Now().After(waitUntil) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(e.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if e.most != attachConcurrency {
		t.Errorf("at most %d attaches at once, want %d", e.most, attachConcurrency)
	}
	vms, _ := s.db.ListVMs(ctx)
	for _, vm := range vms {
		if vm.State != state.VMStopped {
			t.Errorf("%s is %s after a failed attach", vm.Name, vm.State)
		}
	}
}
