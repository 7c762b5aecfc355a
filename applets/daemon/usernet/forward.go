package usernet

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"syscall"

	"banger/internal/errdefs"
)

// Forward publishes a guest port on a host loopback port. banger
// publishes on loopback only: a forward serves the users of this host,
// never its network.
type Forward struct {
	Proto     string // "tcp" (default) or "udp"
	HostAddr  string // an IPv4 loopback address; default 127.0.0.1
	HostPort  int
	GuestPort int
}

func (f Forward) withDefaults() Forward {
	if f.Proto == "" {
		f.Proto = "tcp"
	}
	if f.HostAddr == "" {
		f.HostAddr = "127.0.0.1"
	}
	return f
}

// String is the forward as errors name it: "tcp:127.0.0.1:8080-:80".
func (f Forward) String() string {
	return fmt.Sprintf("%s-:%d", f.host(), f.GuestPort)
}

// host is the forward's host side, "tcp:127.0.0.1:8080": what a
// removal names.
func (f Forward) host() string {
	f = f.withDefaults()
	return fmt.Sprintf("%s:%s:%d", f.Proto, f.HostAddr, f.HostPort)
}

// Validate checks a forward as banger publishes it: protocol tcp or udp,
// ports 1 to 65535, and an IPv4 loopback host address (127.0.0.0/8).
// The user network is IPv4 only, so ::1 is refused in plain words.
func (f Forward) Validate() error {
	if err := f.validateHost(); err != nil {
		return err
	}
	if f.GuestPort < 1 || f.GuestPort > 65535 {
		return errdefs.Errorf(errdefs.ErrInvalid, "port forward %s: guest port %d: want 1 to 65535", f, f.GuestPort)
	}
	return nil
}

// validateHost checks the host side only, which is all a removal names.
func (f Forward) validateHost() error {
	f = f.withDefaults()
	bad := func(format string, args ...any) error {
		return errdefs.Errorf(errdefs.ErrInvalid, "port forward %s: "+format, append([]any{f}, args...)...)
	}
	if f.Proto != "tcp" && f.Proto != "udp" {
		return bad("protocol %q: want tcp or udp", f.Proto)
	}
	if f.HostPort < 1 || f.HostPort > 65535 {
		return bad("host port %d: want 1 to 65535", f.HostPort)
	}
	// Parsed, not matched: "127.0.0.1,hostfwd=..." and names are refused.
	ip, err := netip.ParseAddr(f.HostAddr)
	switch {
	case err != nil:
		return bad("host address %q is not an IP address", f.HostAddr)
	case !ip.IsLoopback():
		return bad("host address %s is not a loopback address; banger publishes only on 127.0.0.0/8", ip)
	case !ip.Is4():
		return bad("host address %s: the user network is IPv4 only; use 127.0.0.1", ip)
	}
	return nil
}

// validateForwards validates each forward and refuses two on one host
// port, which could not both be bound.
func validateForwards(fs []Forward) error {
	seen := map[string]Forward{}
	for _, f := range fs {
		if err := f.Validate(); err != nil {
			return err
		}
		if g, ok := seen[f.host()]; ok {
			return errdefs.Errorf(errdefs.ErrInvalid, "port forwards %s and %s use the same host port", g, f)
		}
		seen[f.host()] = f
	}
	return nil
}

// CheckHostPortFree returns nil when a TCP listener can bind addr:port
// (empty addr is 127.0.0.1), and otherwise an error that names the port:
// a conflict when something holds it.
func CheckHostPortFree(addr string, port int) error {
	return Forward{Proto: "tcp", HostAddr: addr, HostPort: port}.checkFree()
}

// checkFree binds the forward's host port for a moment.
func (f Forward) checkFree() error {
	f = f.withDefaults()
	var l io.Closer
	var err error
	if f.Proto == "udp" {
		l, err = net.ListenPacket("udp", f.local())
	} else {
		l, err = net.Listen("tcp", f.local())
	}
	if err != nil {
		return f.listenError(err)
	}
	return l.Close()
}

// listenError is the error of a failed bind of f's host port: a conflict
// when something holds it.
func (f Forward) listenError(err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return errdefs.Errorf(errdefs.ErrConflict, "host port %d (%s on %s) is already in use on this host: publish on another host port, or stop what holds it",
			f.HostPort, f.Proto, f.HostAddr)
	}
	return fmt.Errorf("check host port %d (%s on %s): %w", f.HostPort, f.Proto, f.HostAddr, err)
}

// Expose publishes f: its host port listens from now on, and each
// connection to it is one to the guest's port. The network publishes TCP
// ports (as the daemon does).
func (n *Network) Expose(f Forward) error {
	f = f.withDefaults()
	if err := f.Validate(); err != nil {
		return err
	}
	if f.Proto != "tcp" {
		return errdefs.Errorf(errdefs.ErrInvalid, "port forward %s: the user network publishes TCP ports only", f)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return errors.New("user network: closed")
	}
	if _, ok := n.exposed[f.host()]; ok {
		return errdefs.Errorf(errdefs.ErrConflict, "host port %d (%s on %s) is already published by this VM", f.HostPort, f.Proto, f.HostAddr)
	}
	ln, err := net.Listen("tcp", f.local())
	if err != nil {
		return f.listenError(err)
	}
	p := &published{ln: ln, f: f}
	n.exposed[f.host()] = p
	go n.serve(p)
	return nil
}

// Unexpose stops publishing f's host port; f's guest port does not
// matter. A port the VM does not publish is not_found. Connections made
// through it go on.
func (n *Network) Unexpose(f Forward) error {
	f = f.withDefaults()
	if err := f.validateHost(); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	p, ok := n.exposed[f.host()]
	if !ok {
		return errdefs.Errorf(errdefs.ErrNotFound, "remove port forward %s: the VM has no forward from host port %d", f.host(), f.HostPort)
	}
	delete(n.exposed, f.host())
	return p.ln.Close()
}

// local is the forward's host address and port, "127.0.0.1:8080".
func (f Forward) local() string {
	f = f.withDefaults()
	return net.JoinHostPort(f.HostAddr, strconv.Itoa(f.HostPort))
}
