package helper

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"

	"banger/internal/api"
	"banger/internal/doctor/doctortest"
)

// testDoctorHost is the helper's checks' view of a host without a bridge
// or a table.
func testDoctorHost(t *testing.T) *doctorHost {
	return &doctorHost{
		uid:       os.Getuid(),
		ipForward: filepath.Join(t.TempDir(), "ip_forward"),
		bridge:    func(string) (hostLink, bool, error) { return hostLink{}, false, nil },
		links:     func() ([]hostLink, error) { return nil, nil },
		nat:       func() (*natInfo, error) { return nil, nil },
	}
}

func doctorRow(t *testing.T, h *doctorHost, name string) api.DoctorRow {
	return doctortest.Row(t, h, helperChecks(), name)
}

func TestBridgeAndNATRows(t *testing.T) {
	h := testDoctorHost(t)
	doctortest.Want(t, doctorRow(t, h, "bridge banger0"), api.DoctorSkip, "no bridged VMs yet")
	addr := []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24")}
	for _, tc := range []struct {
		b      hostLink
		status string
		detail string
	}{
		{hostLink{Kind: "bridge", Up: true, Addrs: addr}, api.DoctorOK, "banger0 up, 10.77.0.1/24"},
		{hostLink{Kind: "bridge"}, api.DoctorWarn, "banger0 is down"},
		{hostLink{Kind: "bridge", Up: true}, api.DoctorWarn, "without an IPv4 address"},
		{hostLink{Kind: "veth", Up: true}, api.DoctorFail, "is a veth, not a bridge"},
	} {
		h.bridge = func(string) (hostLink, bool, error) { return tc.b, true, nil }
		doctortest.Want(t, doctorRow(t, h, "bridge banger0"), tc.status, tc.detail)
	}

	h = testDoctorHost(t)
	h.uid = 1000
	doctortest.Want(t, doctorRow(t, h, "nat"), api.DoctorSkip, "needs root")
	h.uid = 0
	doctortest.Want(t, doctorRow(t, h, "nat"), api.DoctorSkip, "no bridged VMs yet")
	h.bridge = func(string) (hostLink, bool, error) { return hostLink{Kind: "bridge", Up: true}, true, nil }
	doctortest.Want(t, doctorRow(t, h, "nat"), api.DoctorWarn, "bridged guests cannot reach out")
	h.nat = func() (*natInfo, error) { return &natInfo{Rules: []string{"banger banger0 10.77.0.0/24"}}, nil }
	os.WriteFile(h.ipForward, []byte("0\n"), 0o644)
	doctortest.Want(t, doctorRow(t, h, "nat"), api.DoctorWarn, "IPv4 forwarding is off")
	os.WriteFile(h.ipForward, []byte("1\n"), 0o644)
	doctortest.Want(t, doctorRow(t, h, "nat"), api.DoctorOK, "table ip banger: 1 masquerade rule(s) (banger banger0 10.77.0.0/24)")
	h.nat = func() (*natInfo, error) { return nil, errors.New("open nftables: denied") }
	doctortest.Want(t, doctorRow(t, h, "nat"), api.DoctorWarn, "denied")
}

// Taps: none is a skip; each on the bridge is ok; one off it (its VM
// gone without its daemon) warns and names it.
func TestTapsRow(t *testing.T) {
	h := testDoctorHost(t)
	doctortest.Want(t, doctorRow(t, h, "taps"), api.DoctorSkip, "no banger taps")
	links := []hostLink{{Name: "lo", Index: 1}, {Name: "banger0", Index: 5, Kind: "bridge"},
		{Name: "bgtap-aaaa", Index: 6, Kind: "tap", Master: 5}, {Name: "eth0", Index: 2, Master: 0}}
	h.links = func() ([]hostLink, error) { return links, nil }
	doctortest.Want(t, doctorRow(t, h, "taps"), api.DoctorOK, "1 on banger0: bgtap-aaaa")
	links = append(links, hostLink{Name: "bgtap-bbbb", Index: 7, Kind: "tap"})
	r := doctorRow(t, h, "taps")
	doctortest.Want(t, r, api.DoctorWarn, "not on banger0: bgtap-bbbb")
	if r.Code != "taps_loose" {
		t.Errorf("code %q", r.Code)
	}
	h.links = func() ([]hostLink, error) { return nil, errors.New("netlink: denied") }
	doctortest.Want(t, doctorRow(t, h, "taps"), api.DoctorWarn, "denied")
}

// The doctor's readers on a real bridge and table, in a network
// namespace of the test's own.
func TestDoctorReadsABridgeAndNATInANetns(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("a network namespace needs root")
	}
	ns := newNetns(t)
	onThreadIn(t, ns, func() {
		if _, ok, err := (kernelView{}).link(api.DefaultBridge); ok || err != nil {
			t.Errorf("no bridge yet: %v, %v", ok, err)
		}
		if n, err := readNATInfo(); n != nil || err != nil {
			t.Errorf("no table yet: %+v, %v", n, err)
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: api.DefaultBridge}}
		if err := netlink.LinkAdd(br); err != nil {
			t.Fatal(err)
		}
		addr, _ := netlink.ParseAddr("10.77.0.1/24")
		if err := netlink.AddrAdd(br, addr); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(br); err != nil {
			t.Fatal(err)
		}
		h := &doctorHost{uid: 0, ipForward: ipForward, bridge: kernelView{}.link, links: listLinks, nat: readNATInfo}
		doctortest.Want(t, doctorRow(t, h, "bridge banger0"), api.DoctorOK, "banger0 up, 10.77.0.1/24")
		doctortest.Want(t, doctorRow(t, h, "taps"), api.DoctorSkip, "no banger taps")

		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		tb := c.AddTable(natTableRef())
		ch := c.AddChain(natChainRef(tb))
		c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: []expr.Any{&expr.Masq{}},
			UserData: userdata.AppendString(nil, userdata.TypeComment, "banger banger0 10.77.0.0/24")})
		if err := c.Flush(); err != nil {
			t.Skipf("nftables: %v", err)
		}
		n, err := readNATInfo()
		if err != nil || n == nil || len(n.Rules) != 1 || n.Rules[0] != "banger banger0 10.77.0.0/24" {
			t.Errorf("nat: %+v, %v", n, err)
		}
	})
}
