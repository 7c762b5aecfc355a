package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"

	"banger/rpc"
)

// HostFwd forwards a host port to a guest port through the user network.
// banger publishes on loopback only: a forward serves the users of this
// host, never its network.
type HostFwd struct {
	Proto     string // "tcp" (default) or "udp"
	HostAddr  string // an IPv4 loopback address; default 127.0.0.1
	HostPort  int
	GuestPort int
}

// netdevID is the id of the guest's user network, which the monitor's
// hostfwd commands name.
const netdevID = "net0"

func (f HostFwd) withDefaults() HostFwd {
	if f.Proto == "" {
		f.Proto = "tcp"
	}
	if f.HostAddr == "" {
		f.HostAddr = "127.0.0.1"
	}
	return f
}

// String is the forward in QEMU's hostfwd syntax: "tcp:127.0.0.1:8080-:80".
func (f HostFwd) String() string {
	return fmt.Sprintf("%s-:%d", f.host(), f.GuestPort)
}

// host is the forward's host side, "tcp:127.0.0.1:8080": what
// hostfwd_remove takes.
func (f HostFwd) host() string {
	f = f.withDefaults()
	return fmt.Sprintf("%s:%s:%d", f.Proto, f.HostAddr, f.HostPort)
}

// Validate checks a forward as banger publishes it: protocol tcp or udp,
// ports 1 to 65535, and an IPv4 loopback host address (127.0.0.0/8).
// QEMU 7.2's user network cannot forward from IPv6 (it answers "Bad host
// address" to [::1]), so ::1 is refused here in plainer words.
func (f HostFwd) Validate() error {
	if err := f.validateHost(); err != nil {
		return err
	}
	if f.GuestPort < 1 || f.GuestPort > 65535 {
		return rpc.Errorf(rpc.CodeInvalidParams, "port forward %s: guest port %d: want 1 to 65535", f, f.GuestPort)
	}
	return nil
}

// validateHost checks the host side only, which is all a removal names.
func (f HostFwd) validateHost() error {
	f = f.withDefaults()
	bad := func(format string, args ...any) error {
		return rpc.Errorf(rpc.CodeInvalidParams, "port forward %s: "+format, append([]any{f}, args...)...)
	}
	if f.Proto != "tcp" && f.Proto != "udp" {
		return bad("protocol %q: want tcp or udp", f.Proto)
	}
	if f.HostPort < 1 || f.HostPort > 65535 {
		return bad("host port %d: want 1 to 65535", f.HostPort)
	}
	// Parsing also keeps what QEMU's option syntax would split (",", ":")
	// out of the argv.
	ip, err := netip.ParseAddr(f.HostAddr)
	switch {
	case err != nil:
		return bad("host address %q is not an IP address", f.HostAddr)
	case !ip.IsLoopback():
		return bad("host address %s is not a loopback address; banger publishes only on 127.0.0.0/8", ip)
	case !ip.Is4():
		return bad("host address %s: QEMU's user network forwards only from IPv4; use 127.0.0.1", ip)
	}
	return nil
}

// validateHostFwds validates each forward and refuses two on one host
// port, which QEMU could not both bind.
func validateHostFwds(fs []HostFwd) error {
	seen := map[string]HostFwd{}
	for _, f := range fs {
		if err := f.Validate(); err != nil {
			return err
		}
		if g, ok := seen[f.host()]; ok {
			return rpc.Errorf(rpc.CodeInvalidParams, "port forwards %s and %s use the same host port", g, f)
		}
		seen[f.host()] = f
	}
	return nil
}

// CheckHostPortFree returns nil when a TCP listener can bind addr:port
// (empty addr is 127.0.0.1), and otherwise an error that names the port:
// a conflict when something holds it. QEMU itself would only say it
// "could not set up host forwarding rule".
func CheckHostPortFree(addr string, port int) error {
	return HostFwd{Proto: "tcp", HostAddr: addr, HostPort: port}.checkFree()
}

// checkFree binds the forward's host port for a moment, as QEMU will.
func (f HostFwd) checkFree() error {
	f = f.withDefaults()
	hostport := net.JoinHostPort(f.HostAddr, strconv.Itoa(f.HostPort))
	var l io.Closer
	var err error
	if f.Proto == "udp" {
		l, err = net.ListenPacket("udp", hostport)
	} else {
		l, err = net.Listen("tcp", hostport)
	}
	switch {
	case err == nil:
		l.Close()
		return nil
	case errors.Is(err, syscall.EADDRINUSE):
		return rpc.Errorf(rpc.CodeConflict, "host port %d (%s on %s) is already in use on this host: publish on another host port, or stop what holds it",
			f.HostPort, f.Proto, f.HostAddr)
	}
	return fmt.Errorf("check host port %d (%s on %s): %w", f.HostPort, f.Proto, f.HostAddr, err)
}

// checkHostFwdsFree checks every forward's host port before QEMU starts:
// QEMU exits at once on a taken one, without saying it is taken.
func checkHostFwdsFree(fs []HostFwd) error {
	for _, f := range fs {
		if err := f.checkFree(); err != nil {
			return err
		}
	}
	return nil
}

// AddHostFwd adds a forward to the running VM's user network
// (hostfwd_add). The host port is checked first, so a taken one is a
// conflict that names it. The forward lasts as long as this QEMU: the
// caller records it to give it again in the next launch's Spec.
func (i *Instance) AddHostFwd(ctx context.Context, f HostFwd) error {
	f = f.withDefaults()
	if err := f.Validate(); err != nil {
		return err
	}
	if err := f.checkFree(); err != nil {
		return err
	}
	out, err := i.hmp(ctx, "hostfwd_add "+netdevID+" "+f.String())
	if err != nil {
		return fmt.Errorf("add port forward %s: %w", f, err)
	}
	// hostfwd_add prints nothing when it worked, and its error otherwise.
	switch {
	case out == "":
		return nil
	case strings.HasPrefix(out, "Could not set up host forwarding rule"):
		// Taken between the check and QEMU's bind.
		return rpc.Errorf(rpc.CodeConflict, "add port forward %s: host port %d is in use (qemu: %s)", f, f.HostPort, out)
	}
	return fmt.Errorf("add port forward %s: qemu: %s", f, out)
}

// RemoveHostFwd removes the running VM's forward from f's host port
// (hostfwd_remove); f's guest port does not matter. A forward the VM does
// not have is not_found.
func (i *Instance) RemoveHostFwd(ctx context.Context, f HostFwd) error {
	f = f.withDefaults()
	if err := f.validateHost(); err != nil {
		return err
	}
	out, err := i.hmp(ctx, "hostfwd_remove "+netdevID+" "+f.host())
	if err != nil {
		return fmt.Errorf("remove port forward %s: %w", f.host(), err)
	}
	// Unlike hostfwd_add, hostfwd_remove always prints: "host forwarding
	// rule for tcp:127.0.0.1:8080 removed", or "... not found".
	switch {
	case strings.HasSuffix(out, " removed"):
		return nil
	case strings.HasSuffix(out, " not found"):
		return rpc.Errorf(rpc.CodeNotFound, "remove port forward %s: the VM has no forward from host port %d", f.host(), f.HostPort)
	}
	return fmt.Errorf("remove port forward %s: qemu: %s", f.host(), out)
}
