package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"banger/internal/errdefs"
	"banger/internal/layout"
	"banger/logging"
)

// Warm starts save a running guest's memory and device state to a file
// with QEMU's migration to a file (an exec: URI: QEMU 7.2 has no file:
// URI), and a new QEMU, launched with Spec.Incoming and the same devices,
// loads it instead of booting. The disk is the caller's business: the
// restored guest's disk must hold what the saved guest's held when it was
// saved.

// statePoll is how often a save or a load is asked how far it got.
const statePoll = 2 * time.Millisecond

// migrateURI is QEMU's exec: URI for a shell command on path, which must
// be absolute and free of the shell's quote.
func migrateURI(command, path string) (string, error) {
	if !filepath.IsAbs(path) || strings.ContainsAny(path, "'\n") {
		return "", errdefs.Errorf(errdefs.ErrInvalid, "state file %q: want an absolute path without quotes", path)
	}
	return "exec:" + command + " '" + path + "'", nil
}

// SaveState pauses the guest and writes its state to path. The guest
// stays paused, its disks flushed and released, until Continue: that is
// when a copy of its disk matches the saved state.
func (i *Instance) SaveState(ctx context.Context, path string) error {
	uri, err := migrateURI("cat >", path)
	if err != nil {
		return err
	}
	return i.qmpConn(ctx, "save state", func(run qmpRunner) error {
		if _, err := run(qmp.Command{Execute: "stop"}); err != nil {
			return err
		}
		// Migration is throttled to 128 MiB/s by default, for a guest that
		// runs on while it moves; a paused guest to a local file wants none.
		if _, err := run(qmp.Command{Execute: "migrate-set-parameters", Args: map[string]any{"max-bandwidth": int64(1) << 40}}); err != nil {
			return err
		}
		if _, err := run(qmp.Command{Execute: "migrate", Args: map[string]any{"uri": uri}}); err != nil {
			return err
		}
		for {
			var m struct {
				Status string `json:"status"`
				Error  string `json:"error-desc"`
			}
			raw, err := run(qmp.Command{Execute: "query-migrate"})
			if err != nil {
				return err
			}
			if err := json.Unmarshal(raw, &m); err != nil {
				return fmt.Errorf("query-migrate: %w", err)
			}
			switch m.Status {
			case "completed":
				return nil
			case "failed", "cancelled":
				if full(filepath.Dir(path)) {
					// What wrote the file (cat) died of it; QEMU saw a
					// broken pipe.
					return fmt.Errorf("save state to %s: %w (migration %s: %s)", path, syscall.ENOSPC, m.Status, m.Error)
				}
				return fmt.Errorf("save state to %s: migration %s: %s", path, m.Status, m.Error)
			}
			if err := sleepCtx(ctx, statePoll); err != nil {
				return err
			}
		}
	})
}

// Pause stops the guest's CPUs; Continue or LoadState runs them again.
func (i *Instance) Pause(ctx context.Context) error {
	if _, err := i.qmp(ctx, "stop"); err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	return nil
}

// Continue runs a guest that SaveState paused (taking its disks back).
func (i *Instance) Continue(ctx context.Context) error {
	if _, err := i.qmp(ctx, "cont"); err != nil {
		return fmt.Errorf("continue after saving: %w", err)
	}
	return nil
}

// StartLoad begins loading a state SaveState wrote into an instance
// launched with Spec.AwaitState; LoadState waits for it to end. The
// instance's disk may be rewritten in place until then: QEMU opens it
// inactive and reads it afresh when the load ends, as it does for a
// migration over shared storage.
func (i *Instance) StartLoad(ctx context.Context, path string) error {
	uri, err := migrateURI("cat", path)
	if err != nil {
		return err
	}
	if _, err := i.qmpCall(ctx, qmp.Command{Execute: "migrate-incoming", Args: map[string]any{"uri": uri}}); err != nil {
		return i.loadFailed(err)
	}
	return nil
}

// LoadState waits for an instance launched with Spec.Incoming to load its
// state and, when run, for the guest to run; otherwise the guest stays
// paused until Continue (a VM restored ahead of time). A state QEMU cannot
// load makes it exit: the error then carries its log's end.
func (i *Instance) LoadState(ctx context.Context, run bool) error {
	cont := run
	start := time.Now()
	polls := 0
	defer func() {
		logging.From(ctx).Debug().Int("polls", polls).Float64("duration_ms", logging.Millis(time.Since(start))).Msg("state loaded")
	}()
	err := i.qmpConn(ctx, "load state", func(run qmpRunner) error {
		for ; ; polls++ {
			var st Status
			raw, err := run(qmp.Command{Execute: "query-status"})
			if err != nil {
				return err
			}
			if err := json.Unmarshal(raw, &st); err != nil {
				return fmt.Errorf("query-status: %w", err)
			}
			switch st.Status {
			case "running":
				return nil
			case "paused":
				// Saved paused (SaveState stops the guest first), so
				// loaded paused: QEMU keeps the source's run state.
				if !cont {
					return nil
				}
				_, err := run(qmp.Command{Execute: "cont"})
				return err
			case "inmigrate", "prelaunch":
			default:
				return fmt.Errorf("load state: the VM is %q (query-status: %s)", st.Status, raw)
			}
			if err := sleepCtx(ctx, statePoll); err != nil {
				return err
			}
		}
	})
	if err != nil {
		return i.loadFailed(err)
	}
	return nil
}

func (i *Instance) loadFailed(err error) error {
	// A failed load ends QEMU; its QMP may go first.
	if i.waitFor(context.Background(), time.Second) {
		return errdefs.Errorf(errdefs.ErrFailed, "load state: QEMU exited: %s", tail(filepath.Join(i.Dir, layout.EngineLog)))
	}
	return fmt.Errorf("load state: %w", err)
}

// full says whether the file system of dir has no room left for a
// write of a page.
func full(dir string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(dir, &st) == nil && int64(st.Bavail)*st.Bsize < 64<<10
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
