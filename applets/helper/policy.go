package helper

// The helper's rules: every name, CIDR and link a network method may
// touch is checked here, and only here, before anything is changed. The
// peer rule (root and the owner only) is the server's Authorize, set in
// run; the closed method list is methods. Everything else is refused with
// invalid_params, not_found or conflict, and the server's one record per
// call logs the refusal with its code.

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"banger/internal/api"
	"banger/internal/lazyre"
	"banger/internal/privapi"
	"banger/rpc"
)

// Linux interface names are at most 15 bytes (IFNAMSIZ 16 with the NUL),
// so the suffixes are bounded to fit: "banger-" + 8, "bgtap-" + 9.
var bridgeNameRE = lazyre.New(`^(banger0|banger-[a-z0-9][a-z0-9-]{0,7})$`)

// hostLink is what the rules and the network methods read of a link.
type hostLink struct {
	Name   string
	Index  int
	Kind   string // netlink's link type ("bridge", "veth", "device", ...), but "tap" or "tun" for a tuntap
	Master int    // the index of the link's master, 0 for none
	Owner  uint32 // a tap's owner uid
	Up     bool
	MAC    string         // its hardware address, "" when it has none
	Addrs  []netip.Prefix // IPv4 addresses with their prefix
}

// hostRoute is one IPv4 route of the host, from any routing table.
type hostRoute struct {
	Dst netip.Prefix
	Dev string // the route's device, "" for none (blackhole, unreachable)
}

// hostView is what the rules read of the host. It never changes anything.
type hostView interface {
	// routes lists the IPv4 routes of every table.
	routes() ([]hostRoute, error)
	// link finds the link called name; ok is false when there is none.
	link(name string) (l hostLink, ok bool, err error)
}

func invalid(format string, args ...any) error {
	return rpc.Errorf(rpc.CodeInvalidParams, format, args...)
}

// checkBridgeName admits "banger0" and "banger-[a-z0-9][a-z0-9-]{0,7}".
func checkBridgeName(name string) error {
	if !bridgeNameRE().MatchString(name) {
		return invalid("bridge name %q is not a banger bridge (banger0 or banger- and up to 8 of a-z, 0-9, -)", name)
	}
	return nil
}

// checkTapName admits "bgtap-[a-z0-9]{1,9}".
func checkTapName(name string) error {
	if !api.IsTapName(name) {
		return invalid("tap name %q is not a banger tap (bgtap- and up to 9 of a-z, 0-9)", name)
	}
	return nil
}

// checkCIDR parses a banger network (api.ParseNetworkCIDR).
func checkCIDR(s string) (netip.Prefix, error) {
	p, err := api.ParseNetworkCIDR(s)
	if err != nil {
		return netip.Prefix{}, invalid("%v", err)
	}
	return p, nil
}

// checkBridgeNet checks a bridge's name and its network.
func checkBridgeNet(name, cidr string) (netip.Prefix, error) {
	if err := checkBridgeName(name); err != nil {
		return netip.Prefix{}, err
	}
	return checkCIDR(cidr)
}

// bridgeAddress is a bridge's own address on cidr: its first host.
func bridgeAddress(cidr netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(cidr.Addr().Next(), cidr.Bits())
}

// checkNoOverlap refuses a cidr that overlaps a route of the host, other
// than a default route and the routes on bridge itself (which are there
// when the bridge already is).
func checkNoOverlap(cidr netip.Prefix, bridge string, routes []hostRoute) error {
	for _, r := range routes {
		if r.Dst.Bits() == 0 || r.Dev == bridge {
			continue
		}
		if r.Dst.Overlaps(cidr) {
			dev := r.Dev
			if dev == "" {
				dev = "no device"
			}
			return invalid("cidr %s overlaps the host's route %s (%s)", cidr, r.Dst, dev)
		}
	}
	return nil
}

// bridgePlan is a checked priv.ensure_bridge.
type bridgePlan struct {
	name string
	addr netip.Prefix // the bridge's own address
	mac  string       // its own hardware address (bridgeMAC)
	link *hostLink    // the bridge when it is already there
}

// bridgeMAC is a banger bridge's own hardware address: locally
// administered, unicast, from its name. A bridge without one set takes
// the lowest of its ports' and changes as taps come and go, and every
// guest's ARP entry for its gateway then points nowhere until it
// expires: a guest loses the host (DNS, NAT) for tens of seconds.
func bridgeMAC(name string) string {
	h := sha256.Sum256([]byte("banger bridge " + name))
	return fmt.Sprintf(bridgeMACPrefix+"%02x:%02x:%02x", h[0], h[1], h[2])
}

// bridgeMACPrefix starts every banger bridge's MAC; no guest has one.
const bridgeMACPrefix = "02:62:67:"

func checkEnsureBridge(v hostView, p privapi.Bridge) (bridgePlan, error) {
	cidr, err := checkBridgeNet(p.Name, p.CIDR)
	if err != nil {
		return bridgePlan{}, err
	}
	routes, err := v.routes()
	if err != nil {
		return bridgePlan{}, err
	}
	if err := checkNoOverlap(cidr, p.Name, routes); err != nil {
		return bridgePlan{}, err
	}
	plan := bridgePlan{name: p.Name, addr: bridgeAddress(cidr), mac: bridgeMAC(p.Name)}
	l, ok, err := v.link(p.Name)
	if err != nil || !ok {
		return plan, err
	}
	if l.Kind != "bridge" {
		return bridgePlan{}, rpc.Errorf(rpc.CodeConflict, "%s exists and is a %s, not a bridge", p.Name, l.Kind)
	}
	for _, a := range l.Addrs {
		if a != plan.addr {
			return bridgePlan{}, rpc.Errorf(rpc.CodeConflict, "bridge %s already has %s, not %s; reset banger's network to change it", p.Name, a, plan.addr)
		}
	}
	plan.link = &l
	return plan, nil
}

// existingBridge finds the bridge a tap or a NAT rule is for.
func existingBridge(v hostView, name string) (hostLink, error) {
	br, ok, err := v.link(name)
	switch {
	case err != nil:
		return hostLink{}, err
	case !ok:
		return hostLink{}, rpc.Errorf(rpc.CodeNotFound, "bridge %s does not exist; ensure it first", name)
	case br.Kind != "bridge":
		return hostLink{}, invalid("%s is a %s, not a bridge", name, br.Kind)
	}
	return br, nil
}

// tapPlan is a checked priv.create_tap or priv.delete_tap.
type tapPlan struct {
	name   string
	bridge *hostLink // create_tap: the bridge to attach to
	link   *hostLink // the tap when it is already there
	// create_tap: what the guest behind the tap may send as.
	mac  net.HardwareAddr
	addr netip.Addr
}

func checkCreateTap(v hostView, p privapi.Tap) (tapPlan, error) {
	if err := checkTapName(p.Name); err != nil {
		return tapPlan{}, err
	}
	if err := checkBridgeName(p.Bridge); err != nil {
		return tapPlan{}, err
	}
	br, err := existingBridge(v, p.Bridge)
	if err != nil {
		return tapPlan{}, err
	}
	mac, err := checkGuestMAC(p.MAC)
	if err != nil {
		return tapPlan{}, err
	}
	addr, err := checkGuestAddress(br, p.Address)
	if err != nil {
		return tapPlan{}, err
	}
	plan, err := checkDeleteTap(v, p)
	plan.bridge, plan.mac, plan.addr = &br, mac, addr
	return plan, err
}

// checkGuestMAC admits a unicast, locally administered MAC (what banger
// gives its guests), and no other: not the bridge's, not a vendor's.
func checkGuestMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, invalid("guest mac %q: want six bytes, 02:xx:xx:xx:xx:xx", s)
	}
	if mac[0]&1 != 0 || mac[0]&2 == 0 || strings.HasPrefix(mac.String(), bridgeMACPrefix) {
		return nil, invalid("guest mac %s: want a unicast, locally administered address of a guest", mac)
	}
	return mac, nil
}

// checkGuestAddress admits an IPv4 host address of the bridge's network
// that is not the bridge's own.
func checkGuestAddress(br hostLink, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, invalid("guest address %q: want an IPv4 address", s)
	}
	for _, p := range br.Addrs {
		network := p.Masked()
		if network.Contains(a) && a != p.Addr() && a != network.Addr() && a != broadcast(network) {
			return a, nil
		}
	}
	return netip.Addr{}, invalid("guest address %s is not a host address of bridge %s's network", a, br.Name)
}

// broadcast is an IPv4 network's last address.
func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(b[:])|(uint32(1)<<(32-p.Bits())-1))
	return netip.AddrFrom4(b)
}

func checkDeleteTap(v hostView, p privapi.Tap) (tapPlan, error) {
	if err := checkTapName(p.Name); err != nil {
		return tapPlan{}, err
	}
	plan := tapPlan{name: p.Name}
	l, ok, err := v.link(p.Name)
	if err != nil || !ok {
		return plan, err
	}
	if l.Kind != "tap" {
		return tapPlan{}, rpc.Errorf(rpc.CodeConflict, "%s exists and is a %s, not a tap", p.Name, l.Kind)
	}
	plan.link = &l
	return plan, nil
}

// natPlan is a checked priv.ensure_nat or priv.clear_nat.
type natPlan struct {
	bridge string
	cidr   netip.Prefix
	// dnsPort is where the guests' DNS to the bridge's port 53 goes; 0
	// for no redirect.
	dnsPort uint16
	// others are the networks of the host's routes other than the
	// bridge's (ensure_nat): its guests reach none of them.
	others []netip.Prefix
}

// DNS redirects go to an unprivileged port: the daemon, which is not
// root, listens there; a port below 1024 could be a system service's.
const (
	minDNSPort = 1024
	maxDNSPort = 65535
)

func checkClearNAT(_ hostView, p privapi.NAT) (natPlan, error) {
	cidr, err := checkBridgeNet(p.Bridge, p.CIDR)
	if err != nil {
		return natPlan{}, err
	}
	if p.DNSPort != 0 && (p.DNSPort < minDNSPort || p.DNSPort > maxDNSPort) {
		return natPlan{}, invalid("dns port %d: want 0 (none) or %d to %d", p.DNSPort, minDNSPort, maxDNSPort)
	}
	return natPlan{bridge: p.Bridge, cidr: cidr, dnsPort: uint16(p.DNSPort)}, nil
}

// checkEnsureNAT also wants the bridge there with the CIDR's first host:
// NAT is only ever for a banger bridge's own network.
func checkEnsureNAT(v hostView, p privapi.NAT) (natPlan, error) {
	plan, err := checkClearNAT(v, p)
	if err != nil {
		return natPlan{}, err
	}
	br, err := existingBridge(v, p.Bridge)
	if err != nil {
		return natPlan{}, err
	}
	want := bridgeAddress(plan.cidr)
	if !slices.Contains(br.Addrs, want) {
		return natPlan{}, invalid("bridge %s does not carry %s, so %s is not its network", p.Bridge, want, plan.cidr)
	}
	routes, err := v.routes()
	if err != nil {
		return natPlan{}, err
	}
	for _, r := range routes {
		if r.Dev != p.Bridge && r.Dst.Bits() > 0 && !slices.Contains(plan.others, r.Dst.Masked()) {
			plan.others = append(plan.others, r.Dst.Masked())
		}
	}
	return plan, nil
}

// isBangerLink says whether reset_network may remove l: a banger-named
// bridge or tap of the right kind. Nothing else is ever removed.
func isBangerLink(l hostLink) bool {
	switch {
	case l.Kind == "bridge" && bridgeNameRE().MatchString(l.Name):
		return true
	case l.Kind == "tap" && api.IsTapName(l.Name):
		return true
	}
	return false
}

// natComment tags banger's masquerade rule for bridge, so that ensure_nat
// finds it again and clear_nat removes only it.
func natComment(bridge string, cidr netip.Prefix) string {
	return natCommentPrefix(bridge) + cidr.String()
}

func natCommentPrefix(bridge string) string {
	return "banger " + bridge + " "
}

// natRuleFor reports whether comment tags a rule of bridge.
func natRuleFor(comment, bridge string) bool {
	return strings.HasPrefix(comment, natCommentPrefix(bridge))
}

// dnsComment tags one of banger's DNS redirect rules for bridge (proto is
// udp or tcp), so that ensure_nat finds it again and clear_nat removes it.
func dnsComment(bridge, proto string, to netip.Addr, port uint16) string {
	return fmt.Sprintf("%s%s %s:53 redirect to :%d", dnsCommentPrefix(bridge), proto, to, port)
}

func dnsCommentPrefix(bridge string) string {
	return natCommentPrefix(bridge) + "dns "
}

// dnsRuleFor reports whether comment tags a DNS redirect rule of bridge.
func dnsRuleFor(comment, bridge string) bool {
	return strings.HasPrefix(comment, dnsCommentPrefix(bridge))
}
