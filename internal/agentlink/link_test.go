package agentlink_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"banger/internal/agentlink"
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
	fakeAgentServing(t, sock, before, rpc.Methods{agentlink.MethodPing: rpc.Handle(func(context.Context, rpc.NoParams) (agentlink.PingResult, error) {
		return agentlink.PingResult{BootID: "b1"}, nil
	})}, nil)
}

// fakeAgentServing is fakeAgent serving methods and streams.
func fakeAgentServing(t *testing.T, sock string, before func(net.Conn), methods rpc.Methods, streams rpc.Streams) {
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
		hello, _ := json.Marshal(agentlink.Hello{Agent: agentlink.AgentName, Ready: true, BootID: testBootID, Hostname: "h", Nonce: nonce})
		conn.Write([]byte("\x00\x01yamux leftovers {\"agent\n"))
		conn.Write(append(stale, '\n'))
		conn.Write(append(hello, '\n'))
		session, err := yamux.Server(conn, nil)
		if err != nil {
			return
		}
		srv := &rpc.Server{
			Methods:        methods,
			Streams:        streams,
			TrustTransport: true,
			Authorize:      rpc.AllowTrusted,
			Logger:         zerolog.New(io.Discard),
		}
		srv.Serve(session)
	}()
}

// waitLink opens the link to the fake agent on sock, closed when the
// test ends, and a context for its calls.
func waitLink(t *testing.T, sock string) (context.Context, *agentlink.Link) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	link, err := agentlink.Wait(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { link.Close() })
	return ctx, link
}

// testBootID is the fake agent's boot id: a boot id has a UUID's shape
// (agentlink.ValidBootID), or the host does not keep it.
const testBootID = "1c9e8b60-4a8e-4b7c-9d2f-0a1b2c3d4e5f"

func TestWaitSkipsWhatIsNotItsHello(t *testing.T) {
	sock := sockPath(t)
	fakeAgent(t, sock, nil)
	ctx, link := waitLink(t, sock)
	if h := link.Hello(); h.BootID != testBootID || h.Hostname != "h" {
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

// What a hostile agent answers is bounded and checked on the host: an
// error code it made up is operation_failed, its message loses its
// control characters, the ports it lists are TCP sockets or nothing.
func TestHostileAgentAnswers(t *testing.T) {
	sock := sockPath(t)
	fakeAgentServing(t, sock, nil, rpc.Methods{
		agentlink.MethodPing: rpc.Handle(func(context.Context, rpc.NoParams) (agentlink.PingResult, error) {
			return agentlink.PingResult{}, rpc.Errorf("made_up_code", "\x1b[2J\x1b]0;owned\x07all is well")
		}),
		agentlink.MethodSignal: rpc.Handle(func(context.Context, agentlink.SignalParams) (struct{}, error) {
			return struct{}{}, rpc.Errorf(rpc.CodeUnauthorized, "pick exit 6")
		}),
		agentlink.MethodPorts: rpc.Handle(func(context.Context, rpc.NoParams) (agentlink.PortsResult, error) {
			return agentlink.PortsResult{Ports: []agentlink.Port{
				{Proto: "tcp", Address: "0.0.0.0", Port: 22},
				{Proto: "tcp\x1b[31m", Address: "0.0.0.0", Port: 80},
				{Proto: "tcp", Address: "\x1b[2Jnot an address", Port: 80},
				{Proto: "tcp6", Address: "::", Port: 70000},
			}}, nil
		}),
	}, nil)
	ctx, link := waitLink(t, sock)
	_, err := link.Ping(ctx)
	var re *rpc.ErrorResponse
	if !errors.As(err, &re) || re.Code != rpc.CodeOperationFailed || strings.ContainsAny(re.Message, "\x1b\x07") || !strings.Contains(re.Message, "all is well") {
		t.Errorf("a made-up code: %#v", err)
	}
	if err := link.Signal(ctx, "op-x", 2); rpc.CodeOf(err) != rpc.CodeOperationFailed {
		t.Errorf("unauthorized from the guest: %v", err)
	}
	ports, err := link.Ports(ctx)
	if err != nil || len(ports) != 1 || ports[0].Port != 22 {
		t.Errorf("ports: %+v %v", ports, err)
	}
}

func TestValidBootID(t *testing.T) {
	for id, want := range map[string]bool{
		testBootID: true, "": false, "b1": false, strings.ToUpper(testBootID): false,
		"1c9e8b60-4a8e-4b7c-9d2f-0a1b2c3d4e5\x1b": false, "1c9e8b60x4a8e-4b7c-9d2f-0a1b2c3d4e5f": false,
	} {
		if got := agentlink.ValidBootID(id); got != want {
			t.Errorf("ValidBootID(%q) = %v", id, got)
		}
	}
}

// A guest that opens streams to the host (the host serves none) and
// fills them gets each refused at once: the daemon's memory does not
// hold their data. One that answers with more than its method's cap
// gets an error, not the daemon's memory either.
func TestHostileAgentFloods(t *testing.T) {
	sock := sockPath(t)
	big := strings.Repeat("x", 1<<20)
	opened := make(chan int, 1)
	fakeAgent(t, sock, func(conn net.Conn) {
		frame := make([]byte, agentlink.ResetSize)
		io.ReadFull(conn, frame)
		nonce, _ := agentlink.ParseReset(frame)
		hello, _ := json.Marshal(agentlink.Hello{Agent: agentlink.AgentName, Ready: true, BootID: testBootID, Nonce: nonce})
		conn.Write(append(hello, '\n'))
		session, err := yamux.Server(conn, nil)
		if err != nil {
			return
		}
		go func() {
			n := 0
			chunk := make([]byte, 64<<10)
			for range 1000 {
				st, err := session.OpenStream()
				if err != nil {
					break
				}
				n++
				go func() {
					for range 4 { // 256 KiB: a stream's whole window
						if _, err := st.Write(chunk); err != nil {
							return
						}
					}
				}()
			}
			opened <- n
		}()
		(&rpc.Server{
			Methods: rpc.Methods{agentlink.MethodPing: rpc.Handle(func(context.Context, rpc.NoParams) (agentlink.PingResult, error) {
				return agentlink.PingResult{Version: big}, nil
			})},
			TrustTransport: true, Authorize: rpc.AllowTrusted, Logger: zerolog.New(io.Discard),
		}).Serve(session)
	})
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	ctx, link := waitLink(t, sock)
	t.Logf("the guest opened %d streams", <-opened)
	time.Sleep(500 * time.Millisecond) // what it wrote has arrived
	if _, err := link.Ping(ctx); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("an oversize answer: %v", err)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapInuse) - int64(before.HeapInuse); grown > 32<<20 {
		t.Errorf("the flood holds %d MiB of the host's heap", grown>>20)
	}
	select {
	case <-link.Done():
		t.Error("the flood ended the session")
	default:
	}
}
