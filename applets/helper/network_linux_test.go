package helper

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"

	"banger/internal/privapi"
	"banger/rpc"
)

// envNetns carries, into the test's child, the host's network namespace
// (its /proc/self/ns/net link), which the child must not be in.
const envNetns = "BANGER_TEST_HOST_NETNS"

// inNetns runs the calling test again in a child process inside a new
// network namespace, under `ip netns exec`, and reports its outcome on t;
// it returns false there. In the child it returns true and the test goes
// on, every link, route, rule and sysctl it touches being the
// namespace's. The child refuses to run in the host's namespace.
func inNetns(t *testing.T) bool {
	t.Helper()
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if host := os.Getenv(envNetns); host != "" {
		if self == host {
			t.Fatalf("still in the host's network namespace %s; refusing to touch it", host)
		}
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8) to make a network namespace")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	suffix := make([]byte, 4)
	rand.Read(suffix)
	ns := "bangertest-" + hex.EncodeToString(suffix)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Skipf("cannot make a network namespace: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	hostForward := readForward(t)
	cmd := exec.Command("ip", "netns", "exec", ns, exe, "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), envNetns+"="+self)
	out, err := cmd.CombinedOutput()
	t.Logf("in network namespace %s:\n%s", ns, out)
	if err != nil {
		t.Fatalf("the test failed in its network namespace: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatal("the test did not pass in its network namespace")
	}
	if got := readForward(t); got != hostForward {
		t.Errorf("the host's ip_forward changed from %q to %q", hostForward, got)
	}
	return false
}

func readForward(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(ipForward)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// call runs one request through the helper's real server and methods as
// root, and decodes the result into out (when ok).
func call(t *testing.T, srv testSrv, method string, params any, out any) *rpc.ErrorResponse {
	t.Helper()
	raw, err := json.Marshal(params)
	if err != nil {
		t.Fatal(err)
	}
	resp, _ := callStdio(t, srv, 0, method, string(raw))
	if !resp.OK {
		return resp.Error
	}
	if out != nil {
		if err := json.Unmarshal(resp.Result, out); err != nil {
			t.Fatalf("%s: result %s: %v", method, resp.Result, err)
		}
	}
	return nil
}

// mustCall calls method, decodes the result into out and reports
// whether the call says it changed something.
func mustCall(t *testing.T, srv testSrv, method string, params any, out any) (changed bool) {
	t.Helper()
	var raw json.RawMessage
	if err := call(t, srv, method, params, &raw); err != nil {
		t.Fatalf("%s %+v: %v", method, params, err)
	}
	var c struct {
		Changed bool `json:"changed"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatal(err)
		}
	}
	return c.Changed
}

// idempotent calls method twice: the first call must change something
// and the second nothing. The first result goes into out.
func idempotent(t *testing.T, srv testSrv, method string, params any, out any) {
	t.Helper()
	if !mustCall(t, srv, method, params, out) {
		t.Fatalf("first %s %+v changed nothing", method, params)
	}
	if mustCall(t, srv, method, params, nil) {
		t.Fatalf("second %s %+v changed something", method, params)
	}
}

func wantCode(t *testing.T, srv testSrv, code, method string, params any) {
	t.Helper()
	err := call(t, srv, method, params, nil)
	if err == nil || err.Code != code {
		t.Fatalf("%s %+v: got %v, want %s", method, params, err, code)
	}
}

// foreign is what the test puts in the namespace that is not banger's:
// reset_network and clear_nat must leave all of it.
type foreign struct {
	links []string
	table string
}

func addForeign(t *testing.T) foreign {
	t.Helper()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-keep"}}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vkeep0"}, PeerName: "vkeep1"}
	// Named like banger's, but a veth and a tun: not banger's either.
	lookalike := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "banger-v0"}, PeerName: "bgtap-v1"}
	tun := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "bgtap-tun"}, Mode: netlink.TUNTAP_MODE_TUN}
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "tapkeep"}, Mode: netlink.TUNTAP_MODE_TAP}
	for _, l := range []netlink.Link{br, veth, lookalike, tun, tap} {
		if err := netlink.LinkAdd(l); err != nil {
			t.Fatalf("add %s: %v", l.Attrs().Name, err)
		}
	}
	if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("10.50.0.1/24"))}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	kt := c.AddTable(&nftables.Table{Name: "keep", Family: nftables.TableFamilyIPv4})
	c.AddChain(&nftables.Chain{Name: "postrouting", Table: kt, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	return foreign{links: []string{"br-keep", "vkeep0", "vkeep1", "banger-v0", "bgtap-v1", "bgtap-tun", "tapkeep"}, table: "keep"}
}

func (f foreign) check(t *testing.T) {
	t.Helper()
	for _, name := range f.links {
		if _, err := netlink.LinkByName(name); err != nil {
			t.Errorf("%s is gone: %v", name, err)
		}
	}
	if !slices.Contains(nftTables(t), f.table) {
		t.Errorf("nftables table %s is gone", f.table)
	}
}

func nftTables(t *testing.T) []string {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tb := range ts {
		names = append(names, tb.Name)
	}
	return names
}

// bangerRules reads banger's masquerade rules back from the kernel.
func bangerRules(t *testing.T) []*nftables.Rule {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	rules, _, err := natRules(c)
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

func dumpExprs(es []expr.Any) string {
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "%T %+v\n", e, e)
	}
	return b.String()
}

func TestNetworkMethodsInANamespace(t *testing.T) {
	if !inNetns(t) {
		return
	}
	keep := addForeign(t)
	srv := testServer(t)

	// Bridges.
	bridge := privapi.Bridge{Name: "banger0", CIDR: "10.77.0.0/24"}
	var br privapi.BridgeResult
	idempotent(t, srv, privapi.MethodEnsureBridge, bridge, &br)
	if br.Address != "10.77.0.1/24" {
		t.Fatalf("ensure_bridge: %+v", br)
	}
	link, err := netlink.LinkByName("banger0")
	if err != nil {
		t.Fatal(err)
	}
	got, err := describe(link)
	if err != nil {
		t.Fatal(err)
	}
	if got.Kind != "bridge" || !got.Up || !slices.Equal(got.Addrs, []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24")}) || got.MAC != bridgeMAC("banger0") {
		t.Fatalf("banger0 is %+v", got)
	}
	wantCode(t, srv, rpc.CodeInvalidParams, privapi.MethodEnsureBridge, privapi.Bridge{Name: "banger-b", CIDR: "10.77.0.0/16"})
	wantCode(t, srv, rpc.CodeInvalidParams, privapi.MethodEnsureBridge, privapi.Bridge{Name: "banger-b", CIDR: "10.50.0.0/24"})
	wantCode(t, srv, rpc.CodeConflict, privapi.MethodEnsureBridge, privapi.Bridge{Name: "banger0", CIDR: "10.78.0.0/24"})
	wantCode(t, srv, rpc.CodeInvalidParams, privapi.MethodEnsureBridge, privapi.Bridge{Name: "br-keep", CIDR: "10.50.0.0/24"})

	// Taps.
	tap := privapi.Tap{Name: "bgtap-1", Bridge: "banger0", MAC: "02:aa:bb:cc:dd:01", Address: "10.77.0.2"}
	var tr privapi.TapResult
	idempotent(t, srv, privapi.MethodCreateTap, tap, &tr)
	if tr.Owner != testOwner {
		t.Fatalf("create_tap: %+v", tr)
	}
	tl, err := netlink.LinkByName("bgtap-1")
	if err != nil {
		t.Fatal(err)
	}
	tt, ok := tl.(*netlink.Tuntap)
	if !ok {
		t.Fatalf("bgtap-1 is a %s", tl.Type())
	}
	if tt.Mode != netlink.TUNTAP_MODE_TAP || tt.Owner != testOwner || tt.NonPersist || tt.MasterIndex != link.Attrs().Index {
		t.Fatalf("bgtap-1: mode %v owner %d non-persistent %v master %d; want a persistent tap of uid %d on banger0 (%d)",
			tt.Mode, tt.Owner, tt.NonPersist, tt.MasterIndex, testOwner, link.Attrs().Index)
	}
	// The bridge keeps its own address as ports come and go: guests'
	// ARP entries for their gateway stay right.
	if bl, err := netlink.LinkByName("banger0"); err != nil || bl.Attrs().HardwareAddr.String() != bridgeMAC("banger0") {
		t.Errorf("banger0's address with a tap: %v %v, want %s", bl, err, bridgeMAC("banger0"))
	}
	wantCode(t, srv, rpc.CodeInvalidParams, privapi.MethodCreateTap, privapi.Tap{Name: "bgtap-2", Bridge: "br-keep"})
	wantCode(t, srv, rpc.CodeNotFound, privapi.MethodCreateTap, privapi.Tap{Name: "bgtap-2", Bridge: "banger-none"})
	wantCode(t, srv, rpc.CodeInvalidParams, privapi.MethodDeleteTap, privapi.Tap{Name: "tapkeep"})
	wantCode(t, srv, rpc.CodeConflict, privapi.MethodDeleteTap, privapi.Tap{Name: "bgtap-tun"})
	wantCode(t, srv, rpc.CodeConflict, privapi.MethodDeleteTap, privapi.Tap{Name: "bgtap-v1"})
	wantCode(t, srv, rpc.CodeConflict, privapi.MethodCreateTap, privapi.Tap{Name: "bgtap-tun", Bridge: "banger0", MAC: "02:aa:bb:cc:dd:02", Address: "10.77.0.3"})
	wantCode(t, srv, rpc.CodeInvalidParams, privapi.MethodCreateTap, privapi.Tap{Name: "bgtap-2", Bridge: "banger-v0"})
	idempotent(t, srv, privapi.MethodDeleteTap, privapi.Tap{Name: "bgtap-1"}, nil)
	if _, err := netlink.LinkByName("bgtap-1"); err == nil {
		t.Fatal("bgtap-1 is still there")
	}
	mustCall(t, srv, privapi.MethodCreateTap, tap, &tr)

	// NAT.
	nat := privapi.NAT{Bridge: "banger0", CIDR: "10.77.0.0/24"}
	idempotent(t, srv, privapi.MethodEnsureNAT, nat, nil)
	if readForward(t) != "1" {
		t.Fatal("ensure_nat left IPv4 forwarding off")
	}
	rules := bangerRules(t)
	if len(rules) != 1 || ruleComment(rules[0]) != "banger banger0 10.77.0.0/24" {
		t.Fatalf("banger's rules after two ensure_nat: %d, %v", len(rules), rules)
	}
	want := masquerade(natPlan{bridge: "banger0", cidr: netip.MustParsePrefix("10.77.0.0/24")})
	if !reflect.DeepEqual(rules[0].Exprs, want) {
		t.Fatalf("banger's rule reads back as\n%s\nwant\n%s", dumpExprs(rules[0].Exprs), dumpExprs(want))
	}
	wantCode(t, srv, rpc.CodeInvalidParams, privapi.MethodEnsureNAT, privapi.NAT{Bridge: "banger0", CIDR: "10.50.0.0/24"})
	wantCode(t, srv, rpc.CodeInvalidParams, privapi.MethodEnsureNAT, privapi.NAT{Bridge: "br-keep", CIDR: "10.50.0.0/24"})
	idempotent(t, srv, privapi.MethodClearNAT, nat, nil)
	if slices.Contains(nftTables(t), natTable) {
		t.Fatalf("clear_nat left banger's table: %v", nftTables(t))
	}
	keep.check(t)

	// Reset.
	mustCall(t, srv, privapi.MethodEnsureNAT, nat, nil)
	mustCall(t, srv, privapi.MethodEnsureBridge, privapi.Bridge{Name: "banger-b", CIDR: "192.168.77.0/30"}, nil)
	var rr privapi.ResetResult
	idempotent(t, srv, privapi.MethodResetNetwork, nil, &rr)
	if !rr.NATTable || !slices.Equal(rr.Removed, []string{"bgtap-1", "banger0", "banger-b"}) {
		t.Fatalf("reset_network: %+v", rr)
	}
	for _, name := range rr.Removed {
		if _, err := netlink.LinkByName(name); err == nil {
			t.Errorf("%s survived reset_network", name)
		}
	}
	if slices.Contains(nftTables(t), natTable) {
		t.Error("banger's nftables table survived reset_network")
	}
	keep.check(t)
}
