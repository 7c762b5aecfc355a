package helper

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"banger/internal/api"
	"banger/rpc"
)

// callUntil waits for a unit that has not made its socket yet, and gives
// up when its context ends.
func TestCallUntilWaitsForTheSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	srv := &rpc.Server{
		Methods: rpc.Methods{api.MethodPing: rpc.Handle(func(context.Context, rpc.NoParams) (api.PingResult, error) {
			return api.PingResult{Version: "test", PID: os.Getpid()}, nil
		})},
		Authorize: rpc.AllowUIDs(uint32(os.Getuid())),
		Logger:    zerolog.Nop(),
	}
	defer srv.Shutdown(context.Background())
	go func() {
		time.Sleep(150 * time.Millisecond)
		ln, err := rpc.Listen(sock, 0o600)
		if err != nil {
			t.Error(err)
			return
		}
		srv.Serve(ln)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var res api.PingResult
	if err := callUntil(ctx, sock, api.MethodPing, &res); err != nil || res.Version != "test" {
		t.Fatalf("callUntil: %+v %v", res, err)
	}

	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := callUntil(ctx, filepath.Join(t.TempDir(), "none.sock"), api.MethodPing, &res)
	if !errors.Is(err, rpc.ErrUnreachable) || time.Since(start) > 2*time.Second {
		t.Errorf("no socket: %v after %s", err, time.Since(start))
	}
}
