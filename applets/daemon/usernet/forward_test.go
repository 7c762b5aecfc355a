package usernet

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/rpc"
)

func TestForwardValidate(t *testing.T) {
	for _, f := range []Forward{
		{HostPort: 8080, GuestPort: 80},
		{Proto: "udp", HostAddr: "127.0.0.2", HostPort: 5353, GuestPort: 53},
		{Proto: "tcp", HostAddr: "127.255.255.254", HostPort: 65535, GuestPort: 1},
	} {
		if err := f.Validate(); err != nil {
			t.Errorf("%+v: %v", f, err)
		}
	}
	for name, f := range map[string]Forward{
		"sctp":              {Proto: "sctp", HostPort: 8080, GuestPort: 80},
		"host port 0":       {HostPort: 0, GuestPort: 80},
		"host port 65536":   {HostPort: 65536, GuestPort: 80},
		"guest port 0":      {HostPort: 8080},
		"every interface":   {HostAddr: "0.0.0.0", HostPort: 8080, GuestPort: 80},
		"a LAN address":     {HostAddr: "192.168.1.10", HostPort: 8080, GuestPort: 80},
		"IPv6 loopback":     {HostAddr: "::1", HostPort: 8080, GuestPort: 80},
		"IPv4-mapped":       {HostAddr: "::ffff:127.0.0.1", HostPort: 8080, GuestPort: 80},
		"a name":            {HostAddr: "localhost", HostPort: 8080, GuestPort: 80},
		"an option smuggle": {HostAddr: "127.0.0.1,hostfwd=tcp::22", HostPort: 8080, GuestPort: 80},
	} {
		if err := f.Validate(); rpc.CodeOf(err) != rpc.CodeInvalidParams {
			t.Errorf("%s: %v, want invalid_params", name, err)
		}
	}
	// A removal names the host side only.
	if err := (Forward{HostPort: 8080}).validateHost(); err != nil {
		t.Errorf("host side only: %v", err)
	}
	if got := (Forward{HostPort: 8080, GuestPort: 80}).String(); got != "tcp:127.0.0.1:8080-:80" {
		t.Errorf("String = %q", got)
	}
}

// listenTCP holds a loopback TCP port for the test.
func listenTCP(t *testing.T) (net.Listener, int) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, l.Addr().(*net.TCPAddr).Port
}

// freePorts returns n loopback TCP ports that were free a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, p := listenTCP(t)
		defer l.Close()
		ports = append(ports, p)
	}
	return ports
}

func wantPortConflict(t *testing.T, what string, err error, port int) {
	t.Helper()
	if rpc.CodeOf(err) != rpc.CodeConflict || !strings.Contains(err.Error(), "host port "+strconv.Itoa(port)+" ") {
		t.Errorf("%s: %v, want a conflict naming host port %d", what, err, port)
	}
}

func TestCheckHostPortFree(t *testing.T) {
	l, port := listenTCP(t)
	err := CheckHostPortFree("127.0.0.1", port)
	wantPortConflict(t, "a held port", err, port)
	if !strings.Contains(err.Error(), "another host port") {
		t.Errorf("the error does not say what to do: %v", err)
	}
	l.Close()
	if err := CheckHostPortFree("", port); err != nil {
		t.Errorf("a freed port: %v", err)
	}
	// A UDP forward checks UDP.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	uport := pc.LocalAddr().(*net.UDPAddr).Port
	wantPortConflict(t, "a held UDP port", Forward{Proto: "udp", HostPort: uport}.checkFree(), uport)
}

// dialErr connects to a loopback port and hangs up.
func dialErr(port int) error {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 2*time.Second)
	if err == nil {
		c.Close()
	}
	return err
}

// TestForwardsAtRuntime publishes and removes ports of a network while
// it runs, and checks each with a real connection: the network listens
// on a published port, and nothing does once it is removed. No guest is
// needed: the listener accepts before it dials the guest.
func TestForwardsAtRuntime(t *testing.T) {
	ports := freePorts(t, 3)
	first, added, udp := ports[0], ports[1], ports[2]
	n, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.Expose(Forward{HostPort: first, GuestPort: 22}); err != nil {
		t.Fatal(err)
	}
	if err := dialErr(first); err != nil {
		t.Errorf("the first forward: %v", err)
	}
	if err := dialErr(added); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("port %d answers before it is added: %v", added, err)
	}
	if err := n.Expose(Forward{HostPort: added, GuestPort: 80}); err != nil {
		t.Fatal(err)
	}
	if err := dialErr(added); err != nil {
		t.Errorf("the forward added: %v", err)
	}
	// Its own port, and someone else's, are taken.
	wantPortConflict(t, "adding a port twice", n.Expose(Forward{HostPort: added, GuestPort: 81}), added)
	_, held := listenTCP(t)
	wantPortConflict(t, "adding a held port", n.Expose(Forward{HostPort: held, GuestPort: 80}), held)
	if err := n.Expose(Forward{HostAddr: "0.0.0.0", HostPort: held + 1, GuestPort: 80}); rpc.CodeOf(err) != rpc.CodeInvalidParams {
		t.Errorf("adding a public forward: %v", err)
	}

	if err := n.Unexpose(Forward{HostPort: first}); err != nil {
		t.Fatal(err)
	}
	if err := dialErr(first); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("the removed forward still answers: %v", err)
	}
	err = n.Unexpose(Forward{HostPort: first})
	t.Logf("removing it again: %v", err)
	if rpc.CodeOf(err) != rpc.CodeNotFound {
		t.Errorf("removing it again: %v, want not_found", err)
	}
	if err := dialErr(added); err != nil {
		t.Errorf("removing one forward ended another: %v", err)
	}

	// The network publishes TCP ports, as the daemon does.
	if err := n.Expose(Forward{Proto: "udp", HostPort: udp, GuestPort: 53}); rpc.CodeOf(err) != rpc.CodeInvalidParams {
		t.Errorf("publishing a UDP port: %v, want invalid_params", err)
	}

	// Closing the network ends its ports.
	n.Close()
	if err := dialErr(added); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("a closed network's port still answers: %v", err)
	}
}
