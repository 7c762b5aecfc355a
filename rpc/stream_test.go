package rpc_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"banger/rpc"
)

// streamServer serves two stream methods: "upper" answers {"greeting":
// ...} and then echoes each line it reads in upper case until EOF;
// "refuse" fails before the session starts.
func streamServer(t *testing.T) *testServer {
	type greeting struct {
		Greeting string `json:"greeting"`
	}
	return startServer(t, func(s *rpc.Server) {
		s.Streams = rpc.Streams{
			"upper": rpc.HandleStream(func(ctx context.Context, p echoParams) (greeting, rpc.StreamFunc, error) {
				return greeting{"hello " + p.Name}, func(ctx context.Context, conn net.Conn) error {
					sc := bufio.NewScanner(conn)
					for sc.Scan() {
						if _, err := io.WriteString(conn, strings.ToUpper(sc.Text())+"\n"); err != nil {
							return err
						}
					}
					return sc.Err()
				}, nil
			}),
			"refuse": rpc.HandleStream(func(ctx context.Context, p echoParams) (greeting, rpc.StreamFunc, error) {
				return greeting{}, nil, rpc.Errorf(rpc.CodeNotFound, "no %s here", p.Name)
			}),
			"block": rpc.HandleStream(func(ctx context.Context, p echoParams) (greeting, rpc.StreamFunc, error) {
				return greeting{}, func(ctx context.Context, conn net.Conn) error {
					_, err := io.Copy(io.Discard, conn)
					return err
				}, nil
			}),
		}
	})
}

func TestStreamSession(t *testing.T) {
	ts := streamServer(t)
	ctx := context.Background()
	var g struct{ Greeting string }
	st, err := ts.client().OpenStream(ctx, "upper", echoParams{Name: "box"}, &g)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if g.Greeting != "hello box" {
		t.Errorf("result %+v", g)
	}
	r := bufio.NewReader(st)
	for _, line := range []string{"one", "two"} {
		io.WriteString(st, line+"\n")
		got, err := r.ReadString('\n')
		if err != nil || got != strings.ToUpper(line)+"\n" {
			t.Fatalf("echo of %q: %q, %v", line, got, err)
		}
	}
	st.Conn.(*net.UnixConn).CloseWrite()
	if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
		t.Errorf("after the session: %q, %v", rest, err)
	}
	// The call's one record is written when the session ends.
	ts.Logs.waitRecord(t, func(m map[string]any) bool { return m["method"] == "upper" && m["msg"] == "rpc completed" })
}

// Bytes the client writes right behind its request belong to the
// session, even though the server's JSON decoder read them with it.
func TestStreamBytesAfterTheRequest(t *testing.T) {
	ts := streamServer(t)
	conn, err := net.Dial("unix", ts.Sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, `{"version":1,"method":"upper","params":{"name":"x"}}`+"\nearly\n")
	r := bufio.NewReader(conn)
	if line, err := r.ReadString('\n'); err != nil || !strings.Contains(line, `"ok":true`) {
		t.Fatalf("response %q, %v", line, err)
	}
	if line, err := r.ReadString('\n'); err != nil || line != "EARLY\n" {
		t.Errorf("first session line %q, %v", line, err)
	}
}

func TestStreamRefusedAndUnknown(t *testing.T) {
	ts := streamServer(t)
	ctx := context.Background()
	_, err := ts.client().OpenStream(ctx, "refuse", echoParams{Name: "vm"}, nil)
	if e := asErrorResponse(t, err, rpc.CodeNotFound); !rpc.ValidOpID(e.OpID) {
		t.Errorf("refusal without op id: %v", err)
	}
	_, err = ts.client().OpenStream(ctx, "nope", nil, nil)
	asErrorResponse(t, err, rpc.CodeUnknownMethod)
	// A plain method opened as a stream answers and closes.
	st, err := ts.client().OpenStream(ctx, "ping", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(st); err != nil || len(b) != 0 {
		t.Errorf("after a plain answer: %q, %v", b, err)
	}
}

// Shutdown ends sessions that do not end by themselves.
func TestStreamShutdownEndsSessions(t *testing.T) {
	ts := streamServer(t)
	st, err := ts.client().OpenStream(context.Background(), "block", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ts.Shutdown(ctx) }()
	if err := within(t, 5*time.Second, done, "shutdown"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("shutdown = %v, want the deadline", err)
	}
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(st); err != nil {
		t.Errorf("the session's connection was not closed: %v", err)
	}
}
