package helper

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"banger/internal/privapi"
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

// guestOnBridge makes a "guest" namespace on banger0, at 10.77.0.2/24
// with its default route via the bridge's 10.77.0.1.
func guestOnBridge(t *testing.T) netns.NsHandle {
	t.Helper()
	guest := newNetns(t)
	port := plug(t, "vguest0", "vguest1", guest, netip.MustParsePrefix("10.77.0.2/24"), netip.MustParseAddr("10.77.0.1"))
	br, err := netlink.LinkByName("banger0")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetMaster(port, br); err != nil {
		t.Fatal(err)
	}
	return guest
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
	srv := testServer(t)
	mustCall(t, srv, privapi.MethodEnsureBridge, privapi.Bridge{Name: "banger0", CIDR: "10.77.0.0/24"}, nil)
	nat := privapi.NAT{Bridge: "banger0", CIDR: "10.77.0.0/24"}
	mustCall(t, srv, privapi.MethodEnsureNAT, nat, nil)

	// The internet is a public address beyond the uplink's link: a
	// guest reaches no network of the host's own routes, nor a private
	// one (filter_linux.go).
	guest, internet := guestOnBridge(t), newNetns(t)
	uplink := plug(t, "vup0", "vup1", internet, netip.MustParsePrefix("198.18.0.2/30"), netip.Addr{})
	if err := netlink.AddrAdd(uplink, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("198.18.0.1/30"))}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: uplink.Attrs().Index, Gw: net.ParseIP("198.18.0.2")}); err != nil {
		t.Fatal(err)
	}
	onThreadIn(t, internet, func() {
		lo, _ := netlink.LinkByName("lo")
		netlink.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("203.0.113.5/32"))})
	})

	var ln net.Listener
	var err error
	onThreadIn(t, internet, func() { ln, err = net.Listen("tcp4", "203.0.113.5:0") })
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
	if from := c.RemoteAddr().(*net.TCPAddr).IP.String(); from != "198.18.0.1" {
		t.Fatalf("the internet saw the guest's connection from %s, want the uplink's 198.18.0.1", from)
	}

	mustCall(t, srv, privapi.MethodClearNAT, nat, nil)
	if err := dial(time.Second); err == nil {
		t.Fatal("the guest reached the internet with banger's NAT cleared")
	}
}

// TestDNSRedirectCarriesQueries sends a guest's UDP and TCP to the
// bridge's port 53 and sees them arrive at the unprivileged port that
// ensure_nat's dns_port names, where the daemon listens; a changed port
// replaces the rules, dns_port 0 and clear_nat remove them.
func TestDNSRedirectCarriesQueries(t *testing.T) {
	if !inNetns(t) {
		return
	}
	srv := testServer(t)
	mustCall(t, srv, privapi.MethodEnsureBridge, privapi.Bridge{Name: "banger0", CIDR: "10.77.0.0/24"}, nil)
	nat := privapi.NAT{Bridge: "banger0", CIDR: "10.77.0.0/24", DNSPort: 5354}
	idempotent(t, srv, privapi.MethodEnsureNAT, nat, nil)
	wantDNSRules(t, "banger banger0 dns tcp 10.77.0.1:53 redirect to :5354", "banger banger0 dns udp 10.77.0.1:53 redirect to :5354")

	guest := guestOnBridge(t)

	// The "daemon": a UDP echo and a TCP listener on the bridge's address.
	pc, err := net.ListenPacket("udp4", "10.77.0.1:5354")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("echo "), buf[:n]...), from)
		}
	}()
	ln, err := net.Listen("tcp4", "10.77.0.1:5354")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	query := func(timeout time.Duration) (string, error) {
		var reply string
		onThreadIn(t, guest, func() {
			var c net.Conn
			if c, err = net.DialTimeout("udp4", "10.77.0.1:53", timeout); err != nil {
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(timeout))
			if _, err = c.Write([]byte("q")); err != nil {
				return
			}
			buf := make([]byte, 512)
			var n int
			n, err = c.Read(buf)
			reply = string(buf[:n])
		})
		return reply, err
	}
	if got, err := query(5 * time.Second); err != nil || got != "echo q" {
		t.Fatalf("udp to the bridge's port 53: %q, %v", got, err)
	}
	var c net.Conn
	onThreadIn(t, guest, func() { c, err = net.DialTimeout("tcp4", "10.77.0.1:53", 5*time.Second) })
	if err != nil {
		t.Fatalf("tcp to the bridge's port 53: %v", err)
	}
	c.Close()
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	a.Close()

	// Another port replaces the rules; 0 removes them, the masquerade stays.
	nat.DNSPort = 5355
	idempotent(t, srv, privapi.MethodEnsureNAT, nat, nil)
	wantDNSRules(t, "banger banger0 dns tcp 10.77.0.1:53 redirect to :5355", "banger banger0 dns udp 10.77.0.1:53 redirect to :5355")
	if _, err := query(time.Second); err == nil {
		t.Error("a query reached the old port after the redirect moved")
	}
	nat.DNSPort = 0
	idempotent(t, srv, privapi.MethodEnsureNAT, nat, nil)
	wantDNSRules(t)
	if got := bangerRules(t); len(got) != 1 {
		t.Errorf("masquerade rules after dns_port 0: %d, want 1", len(got))
	}

	// clear_dns takes the redirect away and leaves the NAT.
	nat.DNSPort = 5354
	mustCall(t, srv, privapi.MethodEnsureNAT, nat, nil)
	if !mustCall(t, srv, privapi.MethodClearDNS, privapi.NAT{Bridge: "banger0", CIDR: "10.77.0.0/24"}, nil) {
		t.Error("clear_dns changed nothing")
	}
	wantDNSRules(t)
	if got := bangerRules(t); len(got) != 1 {
		t.Errorf("masquerade rules after clear_dns: %d, want 1", len(got))
	}
	if _, err := query(time.Second); err == nil {
		t.Error("a query reached the daemon's port after clear_dns")
	}
	if mustCall(t, srv, privapi.MethodClearDNS, privapi.NAT{Bridge: "banger0", CIDR: "10.77.0.0/24"}, nil) {
		t.Error("a second clear_dns changed something")
	}

	// clear_nat takes the redirect with it, and then the table.
	mustCall(t, srv, privapi.MethodEnsureNAT, nat, nil)
	if !mustCall(t, srv, privapi.MethodClearNAT, privapi.NAT{Bridge: "banger0", CIDR: "10.77.0.0/24"}, nil) {
		t.Error("clear_nat changed nothing")
	}
	if slices.Contains(nftTables(t), natTable) {
		t.Error("banger's table is left after clear_nat")
	}
	if _, err := query(time.Second); err == nil {
		t.Error("a query reached the daemon's port after clear_nat")
	}
}

// wantDNSRules reads banger's DNS redirect rules back from the kernel and
// compares their comments, sorted.
func wantDNSRules(t *testing.T, want ...string) {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	st, err := readNAT(c)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range st.chains[dnsChain] {
		got = append(got, ruleComment(r))
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("dns rules: %q, want %q", got, want)
		for _, r := range st.chains[dnsChain] {
			t.Log(dumpExprs(r.Exprs))
		}
	}
}

// TestBridgedGuestsAreFiltered: a guest on banger0 reaches the internet
// and the daemon's DNS, and nothing else of the host: not a listener on
// the bridge's address, not one on another address of the host, not a
// network of the host's own (a LAN), not a private one. With forwarding
// banger turned on, the host routes nothing between its other
// interfaces. A guest pinned to its MAC and address cannot send as
// another.
func TestBridgedGuestsAreFiltered(t *testing.T) {
	if !inNetns(t) {
		return
	}
	srv := testServer(t)
	os.WriteFile(ipForward, []byte("0\n"), 0o644)
	mustCall(t, srv, privapi.MethodEnsureBridge, privapi.Bridge{Name: "banger0", CIDR: "10.77.0.0/24"}, nil)
	guest, internet, lan := guestOnBridge(t), newNetns(t), newNetns(t)
	uplink := plug(t, "vup0", "vup1", internet, netip.MustParsePrefix("198.18.0.2/30"), netip.Addr{})
	netlink.AddrAdd(uplink, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("198.18.0.1/30"))})
	netlink.RouteAdd(&netlink.Route{LinkIndex: uplink.Attrs().Index, Gw: net.ParseIP("198.18.0.2")})
	onThreadIn(t, internet, func() {
		lo, _ := netlink.LinkByName("lo")
		netlink.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("203.0.113.5/32"))})
		netlink.RouteAdd(&netlink.Route{Dst: ipNet(netip.MustParsePrefix("192.168.50.0/24")), Gw: net.ParseIP("198.18.0.1")})
	})
	lanLink := plug(t, "vlan0", "vlan1", lan, netip.MustParsePrefix("192.168.50.2/24"), netip.MustParseAddr("192.168.50.1"))
	netlink.AddrAdd(lanLink, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("192.168.50.1/24"))})
	// Another address of the host (no dummy links here: no modules).
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("192.0.2.1/32"))}); err != nil {
		t.Fatal(err)
	}
	// ensure_nat now, so the LAN is among the host's routes.
	mustCall(t, srv, privapi.MethodEnsureNAT, privapi.NAT{Bridge: "banger0", CIDR: "10.77.0.0/24", DNSPort: 5354}, nil)

	listen := func(ns *netns.NsHandle, addr string) string {
		var ln net.Listener
		var err error
		do := func() { ln, err = net.Listen("tcp4", addr) }
		if ns == nil {
			do()
		} else {
			onThreadIn(t, *ns, do)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		return ln.Addr().String()
	}
	dialFrom := func(ns netns.NsHandle, local, to string) error {
		var err error
		onThreadIn(t, ns, func() {
			d := net.Dialer{Timeout: time.Second}
			if local != "" {
				d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
			}
			var c net.Conn
			if c, err = d.Dial("tcp4", to); err == nil {
				c.Close()
			}
		})
		return err
	}
	internetAddr := listen(&internet, "203.0.113.5:0")
	if err := dialFrom(guest, "", internetAddr); err != nil {
		t.Fatalf("the guest cannot reach the internet: %v", err)
	}
	dnsAddr := listen(nil, "10.77.0.1:5354") // the daemon's DNS, past the redirect
	for what, to := range map[string]string{
		"a listener on the bridge's address": listen(nil, "10.77.0.1:0"),
		"a listener on another address":      listen(nil, "192.0.2.1:0"),
		"a host of the host's LAN":           listen(&lan, "192.168.50.2:0"),
		"the host's side of the LAN":         listen(nil, "192.168.50.1:0"),
	} {
		if err := dialFrom(guest, "", to); err == nil {
			t.Errorf("the guest reached %s (%s)", what, to)
		}
	}
	if err := dialFrom(guest, "", "10.77.0.1:53"); err != nil {
		t.Errorf("the guest cannot reach the daemon's DNS (%s) through the redirect: %v", dnsAddr, err)
	}
	if err := dialFrom(lan, "", internetAddr); err == nil {
		t.Error("the host routed between its other interfaces with the forwarding banger turned on")
	}

	// Pinned to its MAC and address (as create_tap pins a tap's guest),
	// it can no longer send as another address of the bridge.
	var guestMAC net.HardwareAddr
	onThreadIn(t, guest, func() {
		l, _ := netlink.LinkByName("vguest1")
		guestMAC = l.Attrs().HardwareAddr
		netlink.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("10.77.0.9/24"))})
	})
	if _, err := pinTap(tapPlan{name: "vguest0", mac: guestMAC, addr: netip.MustParseAddr("10.77.0.2")}); err != nil {
		t.Fatal(err)
	}
	if err := dialFrom(guest, "10.77.0.2", internetAddr); err != nil {
		t.Errorf("the pinned guest cannot reach the internet as itself: %v", err)
	}
	if err := dialFrom(guest, "10.77.0.9", internetAddr); err == nil {
		t.Error("the pinned guest sent as 10.77.0.9")
	}
	onThreadIn(t, guest, func() {
		l, _ := netlink.LinkByName("vguest1")
		netlink.LinkSetHardwareAddr(l, net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99})
	})
	if err := dialFrom(guest, "10.77.0.2", internetAddr); err == nil {
		t.Error("the pinned guest sent with another MAC")
	}
	if changed, err := unpinTap("vguest0"); !changed || err != nil {
		t.Errorf("unpin: %v %v", changed, err)
	}

	// The last bridge's NAT cleared: the guard and the forwarding go.
	mustCall(t, srv, privapi.MethodClearNAT, privapi.NAT{Bridge: "banger0", CIDR: "10.77.0.0/24"}, nil)
	if b, _ := os.ReadFile(ipForward); strings.TrimSpace(string(b)) != "0" {
		t.Errorf("ip_forward %q after the last clear_nat; banger turned it on", b)
	}
}
