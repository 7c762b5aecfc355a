package rpc_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"banger/logging"
	"banger/rpc"
)

// serveTCP serves baseMethods on a loopback TCP listener: a transport with
// no SO_PEERCRED, like the agent's yamux streams.
func serveTCP(t *testing.T, configure func(*rpc.Server)) string {
	t.Helper()
	s := &rpc.Server{Methods: baseMethods(), Logger: logging.New(&syncBuffer{}, "rpctest", zerolog.DebugLevel)}
	configure(s)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		if err := within(t, 5*time.Second, done, "Serve to return"); !errors.Is(err, rpc.ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	return ln.Addr().String()
}

func callTCP(t *testing.T, addr, method string, result any) error {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return rpc.CallConn(context.Background(), conn, method, nil, result)
}

func TestTrustTransport(t *testing.T) {
	t.Run("off: a peer without credentials is refused", func(t *testing.T) {
		addr := serveTCP(t, func(s *rpc.Server) { s.Authorize = rpc.AllowUIDs(0, 1000) })
		e := asErrorResponse(t, callTCP(t, addr, "ping", nil), rpc.CodeUnauthorized)
		if want := "cannot read peer credentials: not a unix socket"; e.Message != want {
			t.Errorf("message %q, want %q", e.Message, want)
		}
	})
	t.Run("on: the peer is the transport's", func(t *testing.T) {
		addr := serveTCP(t, func(s *rpc.Server) {
			s.TrustTransport = true
			s.Authorize = rpc.AllowTrusted
		})
		var p rpc.Peer
		if err := callTCP(t, addr, "whoami", &p); err != nil {
			t.Fatal(err)
		}
		if want := (rpc.Peer{UID: rpc.NoID, GID: rpc.NoID, Trusted: true}); p != want {
			t.Errorf("peer = %+v, want %+v", p, want)
		}
	})
	t.Run("on: Authorize still decides", func(t *testing.T) {
		// A uid policy never admits a trusted-transport peer: its uid is
		// NoID, not root's zero.
		addr := serveTCP(t, func(s *rpc.Server) {
			s.TrustTransport = true
			s.Authorize = rpc.AllowUIDs(0)
		})
		asErrorResponse(t, callTCP(t, addr, "ping", nil), rpc.CodeUnauthorized)
	})
}

func TestAllowTrusted(t *testing.T) {
	if err := rpc.AllowTrusted(rpc.Peer{UID: 0}); err == nil {
		t.Error("AllowTrusted admitted a peer read from SO_PEERCRED")
	}
	if err := rpc.AllowTrusted(rpc.Peer{UID: rpc.NoID, GID: rpc.NoID, Trusted: true}); err != nil {
		t.Error(err)
	}
}

func TestCallConn(t *testing.T) {
	addr := serveTCP(t, func(s *rpc.Server) {
		s.TrustTransport = true
		s.Authorize = rpc.AllowTrusted
	})
	var got echoResult
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx := rpc.WithOpID(context.Background(), rpc.NewOpID())
	if err := rpc.CallConn(ctx, conn, "echo", echoParams{Name: "box", N: 2}, &got); err != nil {
		t.Fatal(err)
	}
	if got.Name != "box" || got.N != 2 {
		t.Errorf("result = %+v", got)
	}
	// CallConn closed the connection.
	if _, err := conn.Write([]byte("x")); err == nil {
		t.Error("connection still open after CallConn")
	}
	// Server errors come back as *ErrorResponse; a canceled context ends
	// a blocked call at once.
	asErrorResponse(t, callTCP(t, addr, "fail.not_found", nil), rpc.CodeNotFound)
	conn, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := rpc.CallConn(cctx, conn, "block", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("blocked call = %v, want deadline exceeded", err)
	}
	// Params that cannot be encoded fail before anything is sent.
	conn, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := rpc.CallConn(context.Background(), conn, "echo", make(chan int), nil); err == nil {
		t.Error("unencodable params: no error")
	}
}
