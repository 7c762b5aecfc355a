package rpc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/rs/zerolog"

	"banger/logging"
	"banger/rpc"
)

// benchServer serves ping the way the daemon would: a real socket, the
// peer check, an info-level logger (so the per-call debug record is
// filtered) writing nowhere.
func benchServer(b *testing.B) *rpc.Client {
	ts := startServer(b, func(s *rpc.Server) {
		s.Logger = logging.New(io.Discard, "bench", zerolog.InfoLevel)
	})
	return ts.client()
}

// BenchmarkPing is one Client.Call round trip: dial, request, dispatch,
// response, close.
func BenchmarkPing(b *testing.B) {
	c := benchServer(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		var got pong
		if err := c.Call(ctx, "ping", nil, &got); err != nil || !got.Pong {
			b.Fatal(err)
		}
	}
}

// BenchmarkPingParallel16 runs 16 concurrent clients (SetParallelism(8) on
// GOMAXPROCS=2) against one server.
func BenchmarkPingParallel16(b *testing.B) {
	c := benchServer(b)
	ctx := context.Background()
	b.SetParallelism(16 / max(1, runtimeProcs()))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			var got pong
			if err := c.Call(ctx, "ping", nil, &got); err != nil || !got.Pong {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
}

// rawEchoServer is the baseline: a Unix-socket server that accepts, decodes
// one JSON object, encodes a small reply and closes, one goroutine per
// connection, and nothing else.
func rawEchoServer(b *testing.B) string {
	sock := filepath.Join(shortTempDir(b), "raw.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				var req rpc.Request
				if err := json.NewDecoder(conn).Decode(&req); err != nil {
					return
				}
				json.NewEncoder(conn).Encode(&rpc.Response{OK: true, Result: json.RawMessage(`{"pong":true}`)})
			}()
		}
	}()
	return sock
}

// rawEchoCall is the client side of the baseline: dial, write the same
// request ping sends, decode the reply.
func rawEchoCall(sock string, req []byte) error {
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Write(req); err != nil {
		return err
	}
	var resp struct {
		OK     bool `json:"ok"`
		Result pong `json:"result"`
	}
	return json.NewDecoder(conn).Decode(&resp)
}

var pingRequest = []byte(`{"version":1,"method":"ping"}` + "\n")

func BenchmarkRawEcho(b *testing.B) {
	sock := rawEchoServer(b)
	b.ReportAllocs()
	for b.Loop() {
		if err := rawEchoCall(sock, pingRequest); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRawEchoParallel16(b *testing.B) {
	sock := rawEchoServer(b)
	b.SetParallelism(16 / max(1, runtimeProcs()))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := rawEchoCall(sock, pingRequest); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }

// BenchmarkServeStdio is the transport-free part of a call: read, decode,
// dispatch, encode, log (the sudo mode's cost without the process).
func BenchmarkServeStdio(b *testing.B) {
	s := &rpc.Server{Methods: baseMethods(), Authorize: allowMe(), Logger: logging.New(io.Discard, "bench", zerolog.InfoLevel)}
	peer := rpc.Peer{UID: uint32(os.Getuid())}
	var out bytes.Buffer
	r := bytes.NewReader(pingRequest)
	b.ReportAllocs()
	for b.Loop() {
		out.Reset()
		r.Reset(pingRequest)
		s.ServeStdio(context.Background(), r, &out, peer)
	}
}
