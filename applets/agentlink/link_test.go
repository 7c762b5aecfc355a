package agentlink_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"banger/applets/agentlink"
	"banger/rpc"
)

func sockPath(t *testing.T) string {
	dir, err := os.MkdirTemp("", "bgl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "agent.sock")
}

// fakeAgent answers one connection on sock: it reads the reset frame,
// sends noise and a Hello of another session first, then its Hello and a
// yamux session serving agent.ping. before, if set, replaces all that.
func fakeAgent(t *testing.T, sock string, before func(net.Conn)) {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		if before != nil {
			before(conn)
			return
		}
		frame := make([]byte, agentlink.ResetSize)
		if _, err := io.ReadFull(conn, frame); err != nil {
			return
		}
		nonce, ok := agentlink.ParseReset(frame)
		if !ok {
			t.Errorf("not a reset frame: %q", frame)
			return
		}
		stale, _ := json.Marshal(agentlink.Hello{Agent: agentlink.AgentName, Ready: true, BootID: "stale", Nonce: "0000000000000000"})
		hello, _ := json.Marshal(agentlink.Hello{Agent: agentlink.AgentName, Ready: true, BootID: "b1", Hostname: "h", Nonce: nonce})
		conn.Write([]byte("\x00\x01yamux leftovers {\"agent\n"))
		conn.Write(append(stale, '\n'))
		conn.Write(append(hello, '\n'))
		session, err := yamux.Server(conn, nil)
		if err != nil {
			return
		}
		srv := &rpc.Server{
			Methods: rpc.Methods{agentlink.MethodPing: rpc.Handle(func(context.Context, rpc.NoParams) (agentlink.PingResult, error) {
				return agentlink.PingResult{BootID: "b1"}, nil
			})},
			TrustTransport: true,
			Authorize:      rpc.AllowTrusted,
			Logger:         zerolog.New(io.Discard),
		}
		srv.Serve(session)
	}()
}

func TestWaitSkipsWhatIsNotItsHello(t *testing.T) {
	sock := sockPath(t)
	fakeAgent(t, sock, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	link, err := agentlink.Wait(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer link.Close()
	if h := link.Hello(); h.BootID != "b1" || h.Hostname != "h" {
		t.Errorf("hello %+v", h)
	}
	p, err := link.Ping(ctx)
	if err != nil || p.BootID != "b1" {
		t.Errorf("ping %+v, %v", p, err)
	}
	if err := link.Call(ctx, "agent.nope", nil, nil); rpc.CodeOf(err) != rpc.CodeUnknownMethod {
		t.Errorf("unknown method: %v", err)
	}
}

func TestWaitWaitsForTheSocket(t *testing.T) {
	sock := sockPath(t)
	go func() {
		time.Sleep(100 * time.Millisecond)
		fakeAgent(t, sock, nil)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	link, err := agentlink.Wait(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	link.Close()
}

func TestWaitFailures(t *testing.T) {
	t.Run("nobody listens", func(t *testing.T) {
		sock := sockPath(t)
		ln, _ := net.Listen("unix", sock)
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close()
		start := time.Now()
		_, err := agentlink.Wait(context.Background(), sock)
		if err == nil || !strings.Contains(err.Error(), "nobody listens") || time.Since(start) > time.Second {
			t.Errorf("Wait = %v after %s", err, time.Since(start))
		}
	})
	t.Run("no socket until the context ends", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if _, err := agentlink.Wait(ctx, sockPath(t)); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Wait = %v", err)
		}
	})
	t.Run("closed before the hello", func(t *testing.T) {
		sock := sockPath(t)
		fakeAgent(t, sock, func(c net.Conn) { io.ReadFull(c, make([]byte, agentlink.ResetSize)) })
		_, err := agentlink.Wait(context.Background(), sock)
		if err == nil || !strings.Contains(err.Error(), "closed before the agent was ready") {
			t.Errorf("Wait = %v", err)
		}
	})
	t.Run("silent agent until the context ends", func(t *testing.T) {
		sock := sockPath(t)
		fakeAgent(t, sock, func(c net.Conn) { time.Sleep(2 * time.Second) })
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := agentlink.Wait(ctx, sock)
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
			t.Errorf("Wait = %v after %s", err, time.Since(start))
		}
	})
	t.Run("not ready", func(t *testing.T) {
		sock := sockPath(t)
		fakeAgent(t, sock, func(c net.Conn) {
			frame := make([]byte, agentlink.ResetSize)
			io.ReadFull(c, frame)
			nonce, _ := agentlink.ParseReset(frame)
			b, _ := json.Marshal(agentlink.Hello{Agent: agentlink.AgentName, Nonce: nonce})
			c.Write(append(b, '\n'))
			time.Sleep(time.Second)
		})
		if _, err := agentlink.Wait(context.Background(), sock); err == nil || !strings.Contains(err.Error(), "not ready") {
			t.Errorf("Wait = %v", err)
		}
	})
}

func TestResetFrame(t *testing.T) {
	f := agentlink.ResetFrame([8]byte{0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3})
	if len(f) != agentlink.ResetSize || f[0] == 0 {
		t.Fatalf("frame %x: must be a yamux header's size and not start like one", f)
	}
	if n, ok := agentlink.ParseReset(f); !ok || n != "deadbeef00010203" {
		t.Errorf("ParseReset = %q, %v", n, ok)
	}
	if _, ok := agentlink.ParseReset(make([]byte, agentlink.ResetSize)); ok {
		t.Error("a yamux header parsed as a reset")
	}
	b, _ := json.Marshal(agentlink.Hello{Agent: agentlink.AgentName})
	if !strings.HasPrefix(string(b), agentlink.HelloPrefix) {
		t.Errorf("hello %s does not start with %s", b, agentlink.HelloPrefix)
	}
}
