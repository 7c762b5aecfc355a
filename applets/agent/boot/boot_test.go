package boot

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	c := ParseCmdline("console=ttyS0 rw root=/dev/vda banger.hostname=a banger.hostname=b quiet -- banger.hostname=init-arg\n")
	if c["console"] != "ttyS0" || c[ParamRoot] != "/dev/vda" || c[ParamHostname] != "b" {
		t.Errorf("cmdline %v", c)
	}
	if _, ok := c["rw"]; !ok {
		t.Error("flag rw lost")
	}
	if _, ok := c["quiet"]; !ok {
		t.Error("flag quiet lost")
	}
}

func TestNetworkRoundTrip(t *testing.T) {
	n := UserNetwork()
	c := ParseCmdline(strings.Join(append([]string{"console=ttyS0"}, n.Args()...), " "))
	got, ok, err := c.Network()
	if err != nil || !ok || got != n {
		t.Errorf("Network() = %+v, %v, %v; want %+v", got, ok, err, n)
	}
	if _, ok, err := ParseCmdline("console=ttyS0").Network(); ok || err != nil {
		t.Errorf("no network: ok %v, %v", ok, err)
	}
	for _, bad := range []string{"banger.ip=10.0.2.15", "banger.ip=10.0.2.15/24 banger.gw=gateway", "banger.ip=10.0.2.15/24 banger.dns=1.2.3"} {
		if _, _, err := ParseCmdline(bad).Network(); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	if args := (Network{}).Args(); len(args) != 0 {
		t.Errorf("empty network args %v", args)
	}
}

// A bridged guest's network: an address and a gateway, and no name server
// when the daemon serves none (the agent then leaves resolv.conf alone).
func TestBridgedNetworkRoundTrip(t *testing.T) {
	n := Network{Address: netip.MustParsePrefix("10.77.0.2/24"), Gateway: netip.MustParseAddr("10.77.0.1")}
	if args := n.Args(); !slices.Equal(args, []string{"banger.ip=10.77.0.2/24", "banger.gw=10.77.0.1"}) {
		t.Errorf("args %v", args)
	}
	got, ok, err := ParseCmdline("console=ttyS0 " + strings.Join(n.Args(), " ")).Network()
	if err != nil || !ok || got != n || got.DNS.IsValid() {
		t.Errorf("Network() = %+v, %v, %v; want %+v", got, ok, err, n)
	}
}

// A bridged guest of a daemon that serves NAME.vm: the bridge is its name
// server, and vm its search domain.
func TestBridgedNetworkWithNamesRoundTrip(t *testing.T) {
	n := Network{Address: netip.MustParsePrefix("10.77.0.2/24"), Gateway: netip.MustParseAddr("10.77.0.1"),
		DNS: netip.MustParseAddr("10.77.0.1"), Search: "vm"}
	if args := n.Args(); !slices.Equal(args, []string{"banger.ip=10.77.0.2/24", "banger.gw=10.77.0.1", "banger.dns=10.77.0.1", "banger.search=vm"}) {
		t.Errorf("args %v", args)
	}
	got, ok, err := ParseCmdline("console=ttyS0 " + strings.Join(n.Args(), " ")).Network()
	if err != nil || !ok || got != n {
		t.Errorf("Network() = %+v, %v, %v; want %+v", got, ok, err, n)
	}
	for _, bad := range []string{"", "vm.", ".vm", "vm\\nnameserver", "a..b", "vm;x", strings.Repeat("a", 64)} {
		if _, _, err := ParseCmdline("banger.ip=10.77.0.2/24 banger.search=" + bad).Network(); err == nil {
			t.Errorf("search %q accepted", bad)
		}
	}
	for _, good := range []string{"vm", "corp.example", "a-1.b2"} {
		if n, _, err := ParseCmdline("banger.ip=10.77.0.2/24 banger.search=" + good).Network(); err != nil || n.Search != good {
			t.Errorf("search %q: %+v, %v", good, n, err)
		}
	}
}

func TestInitrdArgs(t *testing.T) {
	if !slices.Equal(InitrdArgs(), []string{"rdinit=" + AgentPath}) || Init != AgentPath {
		t.Errorf("InitrdArgs %v, Init %s", InitrdArgs(), Init)
	}
}
