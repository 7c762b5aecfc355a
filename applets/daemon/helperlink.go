package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"banger/internal/api"
	"banger/internal/layout"
	"banger/logging"
	"banger/rpc"
)

// How the daemon reaches the root helper.
const (
	HelperAuto   = "auto"   // the socket when configured or present, else sudo
	HelperSocket = "socket" // the helper's service socket
	HelperSudo   = "sudo"   // sudo -n <this binary> bangerd-root --stdio, per call
	HelperNone   = "none"   // no helper: privileged features are unavailable
)

// helperLink is the daemon's way to the root helper.
type helperLink struct {
	mode string // socket, sudo or none
	path string // the socket, or the sudo command line

	socket *rpc.Client
	sudo   []string // argv of the sudo command

	// The sudo helper writes its records to its stderr; the daemon keeps
	// them in the state directory so `banger trace` finds them.
	logMu   sync.Mutex // serializes appends to logFile
	logFile *os.File
}

func newHelperLink(mode, socket, stateDir string) (*helperLink, error) {
	if mode == HelperAuto {
		mode = HelperSudo
		if socket != "" {
			mode = HelperSocket
		} else if _, err := os.Stat(layout.SystemHelperSocket); err == nil {
			mode, socket = HelperSocket, layout.SystemHelperSocket
		}
	}
	switch mode {
	case HelperNone:
		return &helperLink{mode: HelperNone}, nil
	case HelperSocket:
		if socket == "" {
			socket = layout.SystemHelperSocket
		}
		// The helper runs as root: a socket another user serves gets no
		// request of ours.
		return &helperLink{mode: mode, path: socket, socket: &rpc.Client{Socket: socket, Server: rpc.AllowUIDs(0)}}, nil
	case HelperSudo:
		// The sudoers rule names this binary's absolute path; /proc/self/exe
		// gives it without trusting PATH.
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find this binary for sudo: %w", err)
		}
		argv := []string{"sudo", "-n", self, api.AppletHelper, "--stdio"}
		f, err := logging.OpenFile(filepath.Join(stateDir, layout.HelperLog))
		if err != nil {
			return nil, err
		}
		return &helperLink{mode: mode, path: strings.Join(argv, " "), sudo: argv, logFile: f}, nil
	}
	return nil, fmt.Errorf("unknown helper mode %q (want auto, socket, sudo or none)", mode)
}

// Describe says how the helper is reached, for logs.
func (h *helperLink) Describe() string {
	if h.path == "" {
		return h.mode
	}
	return h.mode + ": " + h.path
}

// Configured reports whether there is a helper to call at all.
func (h *helperLink) Configured() bool { return h.mode != HelperNone }

// Close releases the helper log.
func (h *helperLink) Close() error {
	if h.logFile != nil {
		return h.logFile.Close()
	}
	return nil
}

// Call makes one helper call with ctx's op id. A helper that cannot be
// reached is an unavailable error that says how to fix it.
func (h *helperLink) Call(ctx context.Context, method string, params, result any) error {
	switch h.mode {
	case HelperSocket:
		err := h.socket.Call(ctx, method, params, result)
		if errors.Is(err, rpc.ErrUnreachable) {
			return rpc.Errorf(rpc.CodeUnavailable, "root helper unreachable on %s: %v; is bangerd-root running? (banger system install sets it up)", h.path, errors.Unwrap(err))
		}
		return err
	case HelperSudo:
		return h.callSudo(ctx, method, params, result)
	}
	return rpc.Errorf(rpc.CodeUnavailable, "no root helper is configured (bangerd --helper none); privileged features are off")
}

// callSudo runs one helper process for the call. Calls of this daemon,
// of other daemons and of the helper service may overlap: each helper
// takes the host-wide flock in root's runtime directory around a network
// change (applets/helper, DefaultLockFile), so the daemon need not, and
// must not be trusted to, order them.
func (h *helperLink) callSudo(ctx context.Context, method string, params, result any) error {
	sudo, err := exec.LookPath(h.sudo[0])
	if err != nil {
		return rpc.Errorf(rpc.CodeUnavailable, "root helper unavailable: sudo is not installed (apt-get install sudo), and no helper socket is configured")
	}
	var stderr bytes.Buffer
	c := &rpc.CommandClient{Path: sudo, Args: h.sudo[1:], Stderr: &stderr}
	err = c.Call(ctx, method, params, result)
	h.keepLog(stderr.Bytes())
	if errors.Is(err, rpc.ErrUnreachable) {
		why := lastPlainLine(stderr.Bytes())
		if why == "" {
			why = errors.Unwrap(err).Error()
		}
		return rpc.Errorf(rpc.CodeUnavailable, "root helper unreachable through %q: %s; allow it in sudoers (banger system install --helper sudo) or run the helper as a service", h.path, why)
	}
	return err
}

// keepLog appends the helper's JSON records to the helper log; other
// lines (sudo's own complaints) stay out of it.
func (h *helperLink) keepLog(b []byte) {
	h.logMu.Lock()
	defer h.logMu.Unlock()
	for line := range bytes.Lines(b) {
		if bytes.HasPrefix(line, []byte("{")) {
			h.logFile.Write(line)
		}
	}
}

// lastPlainLine is the last line of b that is not a JSON record: what sudo
// said when it refused ("sudo: a password is required").
func lastPlainLine(b []byte) string {
	var last string
	for line := range bytes.Lines(b) {
		if t := strings.TrimSpace(string(line)); t != "" && !strings.HasPrefix(t, "{") {
			last = t
		}
	}
	return last
}
