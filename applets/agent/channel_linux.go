package agent

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"banger/applets/agent/boot"
	"banger/internal/agentlink"
	"banger/rpc"
)

// portWait bounds the wait for the agent's serial port to appear.
const portWait = 5 * time.Second

// openPort opens the virtio-serial port named boot.PortName. Opened this
// way it is non-blocking under Go's poller, so deadlines can interrupt a
// read and a wait for the host costs no thread.
func openPort(log zerolog.Logger) (*os.File, error) {
	deadline := time.Now().Add(portWait)
	for {
		names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, n := range names {
			name, err := os.ReadFile(n)
			if err != nil || strings.TrimSpace(string(name)) != boot.PortName {
				continue
			}
			dev := filepath.Join("/dev", filepath.Base(filepath.Dir(n)))
			if err := waitPath(dev, time.Until(deadline)); err != nil {
				return nil, fmt.Errorf("agent port: %w", err)
			}
			f, err := os.OpenFile(dev, os.O_RDWR, 0)
			if err != nil {
				return nil, fmt.Errorf("open the agent port %s: %w", dev, err)
			}
			log.Debug().Str("device", dev).Msg("agent port open")
			return f, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no virtio-serial port named %s (is virtio_console loaded, and does the VM have the port?)", boot.PortName)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// channel serves the host on the agent's port, one host link after another
// (agentlink's wire format: reset frame, Hello, yamux).
type channel struct {
	log   zerolog.Logger
	port  *os.File
	br    *bufio.Reader // the port's bytes, kept across links
	agent *agent
	srv   *rpc.Server

	mu       sync.Mutex    // guards inflight and idle
	inflight int           // calls accepted whose connection is not closed yet
	idle     chan struct{} // closed when inflight drops to zero
}

func newChannel(log zerolog.Logger, port *os.File, a *agent) *channel {
	c := &channel{log: log, port: port, br: bufio.NewReader(port), agent: a}
	c.srv = &rpc.Server{
		Methods: a.methods(),
		Streams: a.streams(),
		// Only the host's engine can open the other end of this port.
		TrustTransport: true,
		Authorize:      rpc.AllowTrusted,
		Logger:         log,
		AdoptOpID:      true,
		CallLog:        rpc.CallLog{Completed: "agent rpc completed", Failed: "agent rpc failed", Level: zerolog.DebugLevel},
	}
	return c
}

// run serves host links until ctx ends.
func (c *channel) run(ctx context.Context) {
	nonce := ""
	for ctx.Err() == nil {
		if nonce == "" {
			if err := c.waitHost(); err != nil {
				c.log.Error().Err(err).Msg("agent port unusable")
				return
			}
			n, err := c.scanReset()
			if err != nil {
				continue // the host left before it said anything
			}
			nonce = n
		}
		if err := c.writeHello(nonce); err != nil {
			c.log.Warn().Err(err).Msg("cannot send the hello")
			nonce = ""
			continue
		}
		nonce = c.serveLink()
	}
}

// waitHost blocks until a host is connected to the port: until then the
// port reads as end-of-file. The port polls writable only when the host
// is there, and Go's poller sleeps until the port's state changes.
func (c *channel) waitHost() error {
	rc, err := c.port.SyscallConn()
	if err != nil {
		return err
	}
	c.port.SetDeadline(time.Time{})
	return rc.Write(func(fd uintptr) bool {
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(p, 0)
		return err != nil || n > 0 && p[0].Revents&unix.POLLOUT != 0
	})
}

// scanReset skips bytes until a reset frame and returns its nonce. It
// fails when the host disconnects first.
func (c *channel) scanReset() (string, error) {
	magic := agentlink.ResetMagic()
	for {
		b, err := c.br.ReadByte()
		if err != nil {
			return "", err
		}
		if b != magic[0] {
			continue
		}
		next, err := c.br.Peek(len(magic) - 1)
		if err != nil {
			return "", err
		}
		if string(next) != string(magic[1:]) {
			continue
		}
		frame := make([]byte, agentlink.ResetSize)
		frame[0] = b
		if _, err := io.ReadFull(c.br, frame[1:]); err != nil {
			return "", err
		}
		nonce, _ := agentlink.ParseReset(frame)
		return nonce, nil
	}
}

func (c *channel) writeHello(nonce string) error {
	hostname, bootID := c.agent.id.get()
	h := agentlink.Hello{
		Agent:    agentlink.AgentName,
		Ready:    true,
		Version:  c.agent.build.Version,
		BootID:   bootID,
		Hostname: hostname,
		Nonce:    nonce,
	}
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	c.port.SetDeadline(time.Now().Add(30 * time.Second))
	defer c.port.SetDeadline(time.Time{})
	_, err = c.port.Write(append(b, '\n'))
	return err
}

// serveLink runs one host link (a yamux mux) on the port until it ends, and
// returns the nonce of the reset frame that ended it, if one did.
func (c *channel) serveLink() string {
	fr := &frameReader{r: c.br}
	conn := &portConn{port: c.port, r: fr}
	mux, err := yamux.Server(conn, agentlink.MuxConfig(&c.log))
	if err != nil {
		c.log.Error().Err(err).Msg("cannot start the host link")
		return ""
	}
	c.log.Info().Msg("host connected")
	served := make(chan struct{})
	go func() {
		defer close(served)
		c.srv.Serve(&trackedListener{Listener: mux, c: c})
	}()
	<-mux.CloseChan()
	<-served
	c.log.Info().Err(fr.err).Msg("host link ended")
	return fr.reset
}

// waitIdle waits, at most d, until no call is in flight.
func (c *channel) waitIdle(d time.Duration) {
	c.mu.Lock()
	if c.inflight == 0 {
		c.mu.Unlock()
		return
	}
	if c.idle == nil {
		c.idle = make(chan struct{})
	}
	idle := c.idle
	c.mu.Unlock()
	select {
	case <-idle:
	case <-time.After(d):
	}
}

func (c *channel) callStarted() {
	c.mu.Lock()
	c.inflight++
	c.mu.Unlock()
}

func (c *channel) callDone() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inflight--
	if c.inflight == 0 && c.idle != nil {
		close(c.idle)
		c.idle = nil
	}
}

// trackedListener counts the calls in flight: the rpc server closes a
// call's connection once its answer is written.
type trackedListener struct {
	net.Listener
	c *channel
}

func (l *trackedListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.c.callStarted()
	return &trackedConn{Conn: conn, done: l.c.callDone}, nil
}

type trackedConn struct {
	net.Conn
	once sync.Once
	done func()
}

func (t *trackedConn) Close() error {
	err := t.Conn.Close()
	t.once.Do(t.done)
	return err
}

// yamux frame header (yamux's spec.md): version, type, flags, stream id,
// length, big-endian; a data frame's length bytes of payload follow.
const (
	yamuxHeaderSize = 12
	yamuxVersion    = 0
	yamuxTypeData   = 0
)

var (
	errReset   = errors.New("the host connected again")
	errGarbage = errors.New("bytes on the port that are not a yamux frame")
)

// frameReader hands the yamux mux exactly its frames from the port,
// reading no further than the end of the current one, and stops at a
// reset frame, recording its nonce. Because it never reads ahead, the
// bytes after a link's end stay for the next one.
type frameReader struct {
	r       *bufio.Reader
	hdr     [yamuxHeaderSize]byte
	pending []byte // header bytes not handed out yet
	payload int    // payload bytes of the current frame not read yet
	reset   string // the nonce of the reset frame that ended the link
	err     error  // why the link's input ended
}

func (f *frameReader) Read(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	if len(f.pending) > 0 {
		n := copy(p, f.pending)
		f.pending = f.pending[n:]
		return n, nil
	}
	if f.payload > 0 {
		n, err := f.r.Read(p[:min(len(p), f.payload)])
		f.payload -= n
		if err != nil {
			f.err = err
		}
		return n, err
	}
	if _, err := io.ReadFull(f.r, f.hdr[:]); err != nil {
		f.err = err
		return 0, err
	}
	if nonce, ok := agentlink.ParseReset(f.hdr[:]); ok {
		f.reset, f.err = nonce, errReset
		return 0, f.err
	}
	if f.hdr[0] != yamuxVersion {
		f.err = errGarbage
		return 0, f.err
	}
	if f.hdr[1] == yamuxTypeData {
		f.payload = int(binary.BigEndian.Uint32(f.hdr[8:]))
	}
	n := copy(p, f.hdr[:])
	f.pending = f.hdr[n:]
	return n, nil
}

// portConn is the port as one host link sees it. Closing it ends the
// link's reads and writes but leaves the port open for the next one:
// closing a virtio port discards what the host already sent.
type portConn struct {
	port *os.File
	r    io.Reader

	mu     sync.Mutex // guards closed, and orders writes after Close
	closed bool
}

func (c *portConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *portConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.port.Write(p)
}

// Close interrupts a blocked read or write (yamux waits for its loops to
// end), so nothing of this link is read or written after it.
func (c *portConn) Close() error {
	c.port.SetDeadline(time.Now())
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return nil
}
