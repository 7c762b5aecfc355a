package helper

import (
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"banger/applets/api"
)

// onThreadIn runs fn on a thread of its own in the network namespace ns.
// The thread is never unlocked, so it ends with fn and no other goroutine
// ever runs in ns by accident.
func onThreadIn(t *testing.T, ns netns.NsHandle, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			t.Errorf("enter network namespace: %v", err)
			return
		}
		fn()
	}()
	<-done
}

// newNetns makes an unnamed network namespace, gone when its handle is
// closed.
func newNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	var ns netns.NsHandle
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // the thread ends in ns, with the goroutine
		ns, err = netns.New()
	}()
	<-done
	if err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// plug makes a veth pair, keeps `here` in this namespace and moves
// `there` into ns with addr, up, and a default route via gw when valid.
func plug(t *testing.T, here, there string, ns netns.NsHandle, addr netip.Prefix, gw netip.Addr) netlink.Link {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: here}, PeerName: there}); err != nil {
		t.Fatal(err)
	}
	peer, err := netlink.LinkByName(there)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(peer, int(ns)); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, name := range []string{"lo", there} {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	l, _ := h.LinkByName(there)
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		t.Fatal(err)
	}
	if gw.IsValid() {
		if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			t.Fatal(err)
		}
	}
	link, err := netlink.LinkByName(here)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	return link
}

// TestMasqueradeCarriesTraffic routes a guest's connection through banger's
// bridge and NAT: the test's namespace is the host, with banger0 and an
// uplink; a "guest" namespace sits on banger0 and an "internet" namespace,
// which has no route back to the guest, on the uplink. The internet sees
// the connection come from the host's uplink address, and without the NAT
// it does not come at all.
func TestMasqueradeCarriesTraffic(t *testing.T) {
	if !inNetns(t) {
		return
	}
	srv := testServer()
	mustCall(t, srv, api.MethodPrivEnsureBridge, api.PrivBridge{Name: "banger0", CIDR: "10.77.0.0/24"}, nil)
	nat := api.PrivNAT{Bridge: "banger0", CIDR: "10.77.0.0/24"}
	mustCall(t, srv, api.MethodPrivEnsureNAT, nat, nil)

	guest, internet := newNetns(t), newNetns(t)
	port := plug(t, "vguest0", "vguest1", guest, netip.MustParsePrefix("10.77.0.2/24"), netip.MustParseAddr("10.77.0.1"))
	br, err := netlink.LinkByName("banger0")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetMaster(port, br); err != nil {
		t.Fatal(err)
	}
	uplink := plug(t, "vup0", "vup1", internet, netip.MustParsePrefix("10.60.0.2/24"), netip.Addr{})
	if err := netlink.AddrAdd(uplink, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("10.60.0.1/24"))}); err != nil {
		t.Fatal(err)
	}

	var ln net.Listener
	onThreadIn(t, internet, func() { ln, err = net.Listen("tcp4", "10.60.0.2:0") })
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dial := func(timeout time.Duration) error {
		var c net.Conn
		onThreadIn(t, guest, func() { c, err = net.DialTimeout("tcp4", ln.Addr().String(), timeout) })
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(5 * time.Second); err != nil {
		t.Fatalf("the guest cannot reach the internet through banger0's NAT: %v", err)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if from := c.RemoteAddr().(*net.TCPAddr).IP.String(); from != "10.60.0.1" {
		t.Fatalf("the internet saw the guest's connection from %s, want the uplink's 10.60.0.1", from)
	}

	mustCall(t, srv, api.MethodPrivClearNAT, nat, nil)
	if err := dial(time.Second); err == nil {
		t.Fatal("the guest reached the internet with banger's NAT cleared")
	}
}
