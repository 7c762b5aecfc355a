package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"banger/applets/agent/boot"
	"banger/internal/agentlink"
	"banger/internal/api"
)

func TestRefusesOutsideAVM(t *testing.T) {
	// The test runs as some pid other than 1: the agent must not touch
	// this machine.
	if code := Main(api.Build{Version: "t"}, []string{api.AppletAgent}); code != exitUsage {
		t.Errorf("exit code %d, want %d", code, exitUsage)
	}
	if code := Main(api.Build{Version: "t"}, []string{api.AppletAgent, "--version"}); code != 0 {
		t.Errorf("--version: exit code %d", code)
	}
}

func yamuxHeader(typ byte, stream, length uint32) []byte {
	h := make([]byte, yamuxHeaderSize)
	h[1] = typ
	binary.BigEndian.PutUint32(h[4:], stream)
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

func TestFrameReader(t *testing.T) {
	nonce := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	var in bytes.Buffer
	data := yamuxHeader(yamuxTypeData, 1, 5)
	in.Write(data)
	in.WriteString("hello")
	window := yamuxHeader(1, 1, 1000) // a window update: its length is no payload
	in.Write(window)
	// A reset frame's bytes inside a payload are payload.
	payload := agentlink.ResetFrame(nonce)
	in.Write(yamuxHeader(yamuxTypeData, 3, uint32(len(payload))))
	in.Write(payload)
	in.Write(agentlink.ResetFrame(nonce))
	in.WriteString("next session")

	br := bufio.NewReader(&in)
	fr := &frameReader{r: br}
	got, err := io.ReadAll(fr)
	if !errors.Is(err, errReset) {
		t.Fatalf("ended with %v, want errReset", err)
	}
	want := append(append(append(append(append([]byte{}, data...), "hello"...), window...), yamuxHeader(yamuxTypeData, 3, uint32(len(payload)))...), payload...)
	if !bytes.Equal(got, want) {
		t.Errorf("frames\n%q\nwant\n%q", got, want)
	}
	if fr.reset != "0102030405060708" {
		t.Errorf("nonce %q", fr.reset)
	}
	// Nothing past the reset frame was consumed.
	rest, _ := io.ReadAll(br)
	if string(rest) != "next session" {
		t.Errorf("left %q", rest)
	}

	fr = &frameReader{r: bufio.NewReader(strings.NewReader("GET / HTTP/1.1\r\n"))}
	if _, err := io.ReadAll(fr); !errors.Is(err, errGarbage) {
		t.Errorf("garbage: %v", err)
	}
	fr = &frameReader{r: bufio.NewReader(bytes.NewReader(yamuxHeader(yamuxTypeData, 1, 10)[:7]))}
	if _, err := io.ReadAll(fr); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("cut header: %v", err)
	}
}

func TestScanReset(t *testing.T) {
	nonce := [8]byte{9, 9, 9, 9, 9, 9, 9, 9}
	in := append([]byte("\xff\xffBG noise \xffBGQ"), agentlink.ResetFrame(nonce)...)
	in = append(in, "after"...)
	c := &channel{br: bufio.NewReader(bytes.NewReader(in))}
	got, err := c.scanReset()
	if err != nil || got != "0909090909090909" {
		t.Errorf("scanReset = %q, %v", got, err)
	}
	rest, _ := io.ReadAll(c.br)
	if string(rest) != "after" {
		t.Errorf("left %q", rest)
	}
	c = &channel{br: bufio.NewReader(strings.NewReader("no reset here"))}
	if _, err := c.scanReset(); !errors.Is(err, io.EOF) {
		t.Errorf("no reset: %v", err)
	}
}

// socketPort stands in for the virtio port: one end of a socket pair,
// opened as a file the way the agent opens its port, and the other end
// as the host's connection.
func socketPort(t *testing.T) (*os.File, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	port := os.NewFile(uintptr(fds[0]), "port")
	hostFile := os.NewFile(uintptr(fds[1]), "host")
	host, err := net.FileConn(hostFile)
	hostFile.Close()
	if err != nil {
		t.Fatal(err)
	}
	return port, host
}

// sharedConn is a host connection whose Close leaves the stream open: the
// next "host" on it plays a daemon that reconnected so fast that the
// guest never saw the port close. Close only stops its reader, as a dead
// daemon's reader stops.
type sharedConn struct{ net.Conn }

func (c sharedConn) Close() error { return c.Conn.SetReadDeadline(time.Now()) }

type connTransport struct{ c net.Conn }

func (t connTransport) Dial(context.Context) (net.Conn, error) {
	return t.c, t.c.SetDeadline(time.Time{})
}

// testBootID is a boot id in the shape the host keeps
// (agentlink.ValidBootID).
const testBootID = "1c9e8b60-4a8e-4b7c-9d2f-0a1b2c3d4e5f"

func TestChannelSessions(t *testing.T) {
	port, host := socketPort(t)
	defer host.Close()
	log := zerolog.New(io.Discard)
	a := &agent{build: api.Build{Version: "v-test"}, id: identity{bootID: testBootID, hostname: "guest"}, log: log, poweroff: make(chan string, 1)}
	ch := newChannel(log, port, a)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ch.run(ctx); close(done) }()
	defer func() {
		cancel()
		port.Close()
		<-done
	}()

	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	for i := range 3 {
		link, err := agentlink.Open(cctx, connTransport{sharedConn{host}})
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		h := link.Hello()
		if h.BootID != testBootID || h.Hostname != "guest" || h.Version != "v-test" || !h.Ready {
			t.Errorf("session %d: hello %+v", i, h)
		}
		p, err := link.Ping(cctx)
		if err != nil || p.BootID != testBootID || p.UptimeMS <= 0 {
			t.Errorf("session %d: ping %+v, %v", i, p, err)
		}
		// Leave without a word: the next session starts on the same
		// stream with the guest none the wiser.
		link.Close()
	}

	link, err := agentlink.Open(cctx, connTransport{sharedConn{host}})
	if err != nil {
		t.Fatal(err)
	}
	if err := link.Call(cctx, agentlink.MethodPowerOff, nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case reason := <-a.poweroff:
		if reason != "requested by the host" {
			t.Errorf("reason %q", reason)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no power-off request")
	}
	start := time.Now()
	ch.waitIdle(3 * time.Second)
	if d := time.Since(start); d > time.Second {
		t.Errorf("waitIdle took %s with nothing in flight", d)
	}
}

func TestMountinfoUnescape(t *testing.T) {
	for in, want := range map[string]string{`/proc`: "/proc", `/mnt/a\040b`: "/mnt/a b", `/x\134y`: `/x\y`} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescape(%q) = %q", in, got)
		}
	}
}

func TestChooseHostname(t *testing.T) {
	if h := chooseHostname(boot.ParseCmdline("console=ttyS0 banger.hostname=box-7")); h != "box-7" {
		t.Errorf("hostname %q", h)
	}
}
