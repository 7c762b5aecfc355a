package engine

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"banger/internal/layout"
)

// KnownKVM reads the kept answer, from memory or from the state
// directory, and never probes.
func TestKnownKVM(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	bin, err := filepath.Abs("/bin/true") // stands in for QEMU: never run here
	if err != nil {
		t.Fatal(err)
	}
	q := &QEMU{Binary: bin, StateDir: dir}
	if st, ok, err := q.KnownKVM(ctx); err != nil || ok {
		t.Fatalf("a fresh engine knows %+v (%v)", st, err)
	}
	if _, err := os.Stat(filepath.Join(dir, layout.KVMProbe)); err == nil {
		t.Fatal("KnownKVM probed")
	}

	// An answer kept by an earlier daemon for this configuration.
	kept := KVMStatus{Usable: true, Reason: "kept", TookMS: 12, ProbedAt: time.Now().UTC().Truncate(time.Second), Key: probeKey(bin)}
	if err := writeJSONAtomic(filepath.Join(dir, layout.KVMProbe), kept); err != nil {
		t.Fatal(err)
	}
	st, ok, err := (&QEMU{Binary: bin, StateDir: dir}).KnownKVM(ctx)
	if err != nil || !ok || st.Reason != "kept" || !st.Usable || !st.ProbedAt.Equal(kept.ProbedAt) {
		t.Errorf("kept answer: %+v %v %v", st, ok, err)
	}
	// One for another configuration is stale.
	kept.Key += " other"
	if err := writeJSONAtomic(filepath.Join(dir, layout.KVMProbe), kept); err != nil {
		t.Fatal(err)
	}
	if st, ok, _ := (&QEMU{Binary: bin, StateDir: dir}).KnownKVM(ctx); ok {
		t.Errorf("stale answer taken: %+v", st)
	}

	// A probe without a kernel keeps a device-level refusal, never an
	// "it opens" that no test boot confirmed.
	st, err = q.KVM(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	after, ok, _ := q.KnownKVM(ctx)
	switch {
	case st.Usable:
		t.Errorf("usable without a test boot: %+v", st)
	case ok != (st.Reason != "/dev/kvm opens, but there is no kernel to test-boot with"):
		t.Errorf("kept %v after %q", ok, st.Reason)
	case ok && after.Reason != st.Reason:
		t.Errorf("kept %q, probed %q", after.Reason, st.Reason)
	}

	// No QEMU: the engine's unavailable error.
	if _, _, err := (&QEMU{Binary: filepath.Join(dir, "no-qemu")}).KnownKVM(ctx); err == nil {
		t.Error("KnownKVM without QEMU")
	}
}
