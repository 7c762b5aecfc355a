// Package privapi is the root helper's wire contract: the priv.* methods,
// their parameters and results, and a typed client. The daemon is its
// one caller; the helper checks every field (applets/helper/policy.go).
package privapi

// MethodPing is the helper's priv.ping.
const MethodPing = "priv.ping"

// PingResult answers priv.ping.
type PingResult struct {
	Version      string   `json:"version"`
	EUID         int      `json:"euid"`
	CapEffective string   `json:"cap_effective"`
	Capabilities []string `json:"capabilities"`
}

// The helper's network methods. Each is idempotent: asking for what is
// already there succeeds and says so (Changed false). The helper checks
// every field against its rules (applets/helper/policy.go) before it acts
// and answers invalid_params for anything outside them.
const (
	MethodEnsureBridge = "priv.ensure_bridge"
	MethodCreateTap    = "priv.create_tap"
	MethodDeleteTap    = "priv.delete_tap"
	MethodEnsureNAT    = "priv.ensure_nat"
	MethodClearNAT     = "priv.clear_nat"
	// MethodClearDNS removes a bridge's DNS redirect (and the
	// filter's opening for it), leaving its NAT: a daemon that stops
	// leaves no redirect to a port someone else could then take.
	MethodClearDNS     = "priv.clear_dns"
	MethodResetNetwork = "priv.reset_network"
)

// Bridge is the params of priv.ensure_bridge. Name is "banger0" or
// "banger-" and 1 to 8 of [a-z0-9-], the first not a "-" (Linux names
// are at most 15 bytes). CIDR is the bridge's network, a
// private (RFC 1918) IPv4 network address with a prefix from /16 to /30,
// e.g. "10.77.0.0/24"; it must not overlap a route of the host other than
// this bridge's own. The bridge's own address is the first host of the
// CIDR ("10.77.0.1/24"), which the guests use as their gateway.
type Bridge struct {
	Name string `json:"name"`
	CIDR string `json:"cidr"`
}

// BridgeResult answers priv.ensure_bridge.
type BridgeResult struct {
	Name string `json:"name"`
	// Address is the bridge's own address with the CIDR's prefix.
	Address string `json:"address"`
	// Changed is false when the bridge was already there, up, with
	// Address.
	Changed bool `json:"changed"`
}

// Tap is the params of priv.create_tap and priv.delete_tap. Name is
// "bgtap-" and up to 9 of [a-z0-9]. Bridge (create_tap only) is an
// existing banger bridge the tap is attached to. The tap is owned by the
// helper's owner uid, so the VM engine, running as the owner, can open it.
type Tap struct {
	Name   string `json:"name"`
	Bridge string `json:"bridge,omitempty"`
	// MAC and Address are what the guest behind the tap may send as
	// (create_tap): frames from another MAC, and IPv4 or ARP from another
	// address, are dropped.
	MAC     string `json:"mac,omitempty"`
	Address string `json:"address,omitempty"`
}

// TapResult answers priv.create_tap and priv.delete_tap.
type TapResult struct {
	Name   string `json:"name"`
	Bridge string `json:"bridge,omitempty"`
	// Owner is the uid that may open the tap (create_tap).
	Owner uint32 `json:"owner"`
	// Changed is false when there was nothing to do: the tap was already
	// there as asked (create) or already gone (delete).
	Changed bool `json:"changed"`
}

// NAT is the params of priv.ensure_nat and priv.clear_nat: masquerade
// traffic from CIDR leaving through any interface but Bridge. For
// ensure_nat, Bridge must exist and carry the CIDR's first host; CIDR
// follows Bridge's rules.
//
// DNSPort (ensure_nat), when not 0, also redirects the guests' DNS: UDP
// and TCP from Bridge to the bridge's own address, port 53, go to that
// address's DNSPort (1024 to 65535), where the daemon, which cannot bind
// 53, answers NAME.vm. 0 removes the bridge's redirect; clear_nat always
// does.
type NAT struct {
	Bridge  string `json:"bridge"`
	CIDR    string `json:"cidr"`
	DNSPort int    `json:"dns_port,omitempty"`
}

// NATResult answers priv.ensure_nat and priv.clear_nat.
type NATResult struct {
	Bridge string `json:"bridge"`
	CIDR   string `json:"cidr"`
	// Changed is false when the rules (and, for ensure_nat, IPv4
	// forwarding) were already as asked.
	Changed bool `json:"changed"`
}

// ResetResult answers priv.reset_network, which takes no params and
// removes every banger tap and bridge and banger's nftables table.
type ResetResult struct {
	// Removed names the links removed, taps first.
	Removed []string `json:"removed"`
	// NATTable is true when banger's nftables table was there and removed.
	NATTable bool `json:"nat_table"`
	Changed  bool `json:"changed"`
}
