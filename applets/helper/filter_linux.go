package helper

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// A bridged guest is a stranger on the host's network, so banger's own
// tables filter what it may send; nothing outside them is read or
// changed.
//
// In "ip banger", beside the NAT (nat_linux.go), two filter chains:
//
//	input, for traffic to the host itself:
//	  iifname BRIDGE ct state established,related accept
//	  iifname BRIDGE ip daddr ADDR udp dport PORT accept   (and tcp: the daemon's DNS, past the redirect)
//	  iifname BRIDGE ip daddr ADDR icmp type echo-request accept
//	  iifname BRIDGE drop
//	forward, for traffic the host routes:
//	  iifname BRIDGE oifname BRIDGE accept
//	  iifname BRIDGE ip daddr NET drop   (each reserved network, and each of the host's other routes)
//	  iifname != "banger*" oifname != "banger*" drop   (only when banger turned forwarding on)
//
// so a guest reaches the internet through the NAT, and of the host only
// the DNS the daemon answers and a ping of its gateway. The last rule
// keeps the host from routing between its other interfaces once banger
// turned on IPv4 forwarding for its guests; a host that forwarded before
// banger did gets no such rule.
//
// In "bridge banger", one chain at the bridge's prerouting, a few rules
// per tap, that pin its guest to the MAC and the IPv4 address banger gave
// it (no spoofing of another guest or of the gateway):
//
//	iifname TAP ether saddr != MAC drop
//	iifname TAP meta protocol ip ip saddr != ADDR drop
//	iifname TAP meta protocol arp arp saddr ip != ADDR drop
//	iifname TAP meta protocol arp arp saddr ether != MAC drop
//	iifname TAP meta protocol != ip meta protocol != arp drop   (no IPv6 on banger bridges)
const (
	inputChain   = "input"
	forwardChain = "forward"
	pinChain     = "prerouting"
)

// reservedNets are never reachable from a bridge: this host, private and
// shared networks (other hosts' LANs and VPNs), link-local (cloud
// metadata), multicast and reserved.
var reservedNets = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
}

func filterChainOf(t *nftables.Table, name string, hook *nftables.ChainHook) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: t, Type: nftables.ChainTypeFilter, Hooknum: hook, Priority: nftables.ChainPriorityFilter}
}

func pinTableRef() *nftables.Table {
	return &nftables.Table{Name: natTable, Family: nftables.TableFamilyBridge}
}

func pinChainRef(t *nftables.Table) *nftables.Chain {
	return &nftables.Chain{Name: pinChain, Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-200)}
}

// filterComment tags a filter rule of bridge; filterRuleFor finds them.
func filterComment(bridge, what string) string { return "banger " + bridge + " filter " + what }

func filterRuleFor(comment, bridge string) bool {
	return strings.HasPrefix(comment, "banger "+bridge+" filter ")
}

// forwardGuard tags the rule that stops the host from routing between
// its own interfaces, there once banger turned forwarding on.
const forwardGuard = "banger forward guard"

// filterRules are the input and forward rules of plan's bridge, each
// chain's in the order they must run (syncOrdered).
func filterRules(plan natPlan) (input, forward []namedRule) {
	br := ifname(plan.bridge)
	addr := bridgeAddress(plan.cidr).Addr().As4()
	iif := metaEq(expr.MetaKeyIIFNAME, br)
	input = append(input, namedRule{filterComment(plan.bridge, "input established"), join(iif, ctEstablished(), accept())})
	if plan.dnsPort != 0 {
		for _, p := range []struct {
			name  string
			proto byte
		}{{"udp", unix.IPPROTO_UDP}, {"tcp", unix.IPPROTO_TCP}} {
			input = append(input, namedRule{filterComment(plan.bridge, fmt.Sprintf("input dns %s :%d", p.name, plan.dnsPort)),
				join(iif, daddrEq(addr), l4Eq(p.proto), dportEq(plan.dnsPort), accept())})
		}
	}
	input = append(input,
		namedRule{filterComment(plan.bridge, "input ping"), join(iif, daddrEq(addr), l4Eq(unix.IPPROTO_ICMP),
			[]expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{8}}}, accept())},
		namedRule{filterComment(plan.bridge, "input drop"), join(iif, drop())})

	forward = append(forward, namedRule{filterComment(plan.bridge, "forward within"), join(iif, metaEq(expr.MetaKeyOIFNAME, br), accept())})
	nets := append(append([]netip.Prefix{}, reservedNets...), plan.others...)
	for _, n := range nets {
		forward = append(forward, namedRule{filterComment(plan.bridge, "forward deny "+n.String()), join(iif, daddrIn(n), drop())})
	}
	return input, forward
}

// guardRule is `iifname != "banger*" oifname != "banger*" drop`: what
// the host routes between interfaces of its own.
func guardRule() []expr.Any {
	prefix := []byte("banger")
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: prefix},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: prefix},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// pinRules are the rules that pin tap's guest to mac and addr.
func pinRules(tap string, mac net.HardwareAddr, addr netip.Addr) []namedRule {
	iif := metaEq(expr.MetaKeyIIFNAME, ifname(tap))
	ip := addr.As4()
	proto := func(etype uint16) []expr.Any {
		return metaEq(expr.MetaKeyPROTOCOL, binaryutil.BigEndian.PutUint16(etype))
	}
	c := func(what string) string { return pinComment(tap, what) }
	return []namedRule{
		{c("ether saddr"), join(iif, []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: mac}}, drop())},
		{c("ip saddr"), join(iif, proto(unix.ETH_P_IP), []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ip[:]}}, drop())},
		{c("arp saddr ip"), join(iif, proto(unix.ETH_P_ARP), []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 14, Len: 4},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ip[:]}}, drop())},
		{c("arp saddr ether"), join(iif, proto(unix.ETH_P_ARP), []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 6},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: mac}}, drop())},
		{c("other protocols"), join(iif, []expr.Any{&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.BigEndian.PutUint16(unix.ETH_P_IP)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.BigEndian.PutUint16(unix.ETH_P_ARP)}}, drop())},
	}
}

// pinComment tags a pin rule of tap; pinRuleFor finds them.
func pinComment(tap, what string) string { return "banger tap " + tap + " " + what }

func pinRuleFor(comment, tap string) bool { return strings.HasPrefix(comment, "banger tap "+tap+" ") }

// namedRule is a rule and the comment it is found again by.
type namedRule struct {
	comment string
	exprs   []expr.Any
}

// syncOrdered queues the changes that make chain ch end with want, in
// its order, among the rules owned claims: when the owned rules are not
// exactly want's, by comment and in order, they all go and want's are
// added anew (an accept must come before a drop). Others' rules are left.
// It reports how many rules it queues to add or remove.
func syncOrdered(c *nftables.Conn, ch *nftables.Chain, rules []*nftables.Rule, want []namedRule, owned func(comment string) bool) (int, error) {
	var have []*nftables.Rule
	for _, r := range rules {
		if owned(ruleComment(r)) {
			have = append(have, r)
		}
	}
	same := len(have) == len(want)
	for i := 0; same && i < len(want); i++ {
		same = ruleComment(have[i]) == want[i].comment
	}
	if same {
		return 0, nil
	}
	for _, r := range have {
		if err := c.DelRule(&nftables.Rule{Table: ch.Table, Chain: ch, Handle: r.Handle}); err != nil {
			return 0, fmt.Errorf("remove stale rule %q: %w", ruleComment(r), err)
		}
	}
	for _, r := range want {
		c.AddRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: r.exprs, UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment)})
	}
	return len(have) + len(want), nil
}

func join(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// metaEq is `meta KEY == data` (an interface name: NUL padded).
func metaEq(key expr.MetaKey, data []byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data}}
}

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }
func drop() []expr.Any   { return []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}} }

func ctEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

func daddrEq(addr [4]byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:]},
	}
}

func daddrIn(n netip.Prefix) []expr.Any { return addrIn(16, n) }

// addrIn is `ip saddr NET` (offset 12) or `ip daddr NET` (offset 16).
func addrIn(offset uint32, n netip.Prefix) []expr.Any {
	mask := make([]byte, 4)
	for i := range n.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	network := n.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: network[:]},
	}
}

func l4Eq(proto byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}}}
}

func dportEq(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

// ensureFilter makes the input and forward rules of plan's bridge what
// they should be, and adds the forward guard when guard is set (banger
// just turned forwarding on), keeping one that is there. It reports
// whether it changed anything.
func ensureFilter(plan natPlan, guard bool) (bool, error) {
	c, st, err := openNAT()
	if err != nil {
		return false, err
	}
	t := c.AddTable(natTableRef())
	in := c.AddChain(filterChainOf(t, inputChain, nftables.ChainHookInput))
	fw := c.AddChain(filterChainOf(t, forwardChain, nftables.ChainHookForward))
	input, forward := filterRules(plan)
	owned := func(comment string) bool { return filterRuleFor(comment, plan.bridge) }
	n, err := syncOrdered(c, in, st.chains[inputChain], input, owned)
	if err != nil {
		return false, err
	}
	m, err := syncOrdered(c, fw, st.chains[forwardChain], forward, owned)
	if err != nil {
		return false, err
	}
	n += m
	// The guard matches no bridge's traffic, so where it sits among the
	// bridges' rules does not matter.
	if guard && !st.guarded() {
		c.AddRule(&nftables.Rule{Table: t, Chain: fw, Exprs: guardRule(), UserData: userdata.AppendString(nil, userdata.TypeComment, forwardGuard)})
		n++
	}
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("add the filter rules of %s: %w", plan.bridge, err)
	}
	return n > 0, nil
}

// clearFilterRules queues the removal of bridge's filter rules (the
// guard stays: forwarding stays on) and reports how many.
func clearFilterRules(c *nftables.Conn, st natState, bridge string) (int, error) {
	t := natTableRef()
	owned := func(comment string) bool { return filterRuleFor(comment, bridge) }
	n, err := syncOrdered(c, filterChainOf(t, inputChain, nftables.ChainHookInput), st.chains[inputChain], nil, owned)
	if err != nil {
		return 0, err
	}
	m, err := syncOrdered(c, filterChainOf(t, forwardChain, nftables.ChainHookForward), st.chains[forwardChain], nil, owned)
	return n + m, err
}

// pinTap makes the pin rules of plan's tap what they should be.
func pinTap(plan tapPlan) (bool, error) {
	c, rules, err := openPins()
	if err != nil {
		return false, err
	}
	t := c.AddTable(pinTableRef())
	ch := c.AddChain(pinChainRef(t))
	n, err := syncOrdered(c, ch, rules, pinRules(plan.name, plan.mac, plan.addr), func(comment string) bool { return pinRuleFor(comment, plan.name) })
	if err != nil {
		return false, err
	}
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("pin the guest of %s: %w", plan.name, err)
	}
	return n > 0, nil
}

// unpinTap removes the pin rules of tap, if any.
func unpinTap(tap string) (bool, error) {
	c, rules, err := openPins()
	if err != nil || rules == nil {
		return false, err
	}
	t := pinTableRef()
	n, err := syncOrdered(c, pinChainRef(t), rules, nil, func(comment string) bool { return pinRuleFor(comment, tap) })
	if err != nil || n == 0 {
		return false, err
	}
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("unpin the guest of %s: %w", tap, err)
	}
	return true, nil
}

// openPins connects to nftables and reads the rules of banger's bridge
// table (nil when it is not there).
func openPins() (*nftables.Conn, []*nftables.Rule, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, nil, fmt.Errorf("open nftables: %w", err)
	}
	rules, err := pinTableRules(c)
	return c, rules, err
}

// pinTableRules reads the rules of banger's bridge table, nil when it is
// not there.
func pinTableRules(c *nftables.Conn) ([]*nftables.Rule, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyBridge)
	if err != nil {
		return nil, fmt.Errorf("list nftables bridge tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == natTable {
			rules, err := c.GetRules(pinTableRef(), &nftables.Chain{Name: pinChain, Table: pinTableRef()})
			if err != nil {
				return nil, fmt.Errorf("list the rules of bridge %s %s: %w", natTable, pinChain, err)
			}
			if rules == nil {
				rules = []*nftables.Rule{}
			}
			return rules, nil
		}
	}
	return nil, nil
}

// deletePinTable removes banger's bridge table, and reports whether it was
// there.
func deletePinTable() (bool, error) {
	c, rules, err := openPins()
	if err != nil || rules == nil {
		return false, err
	}
	c.DelTable(pinTableRef())
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("delete nftables table bridge %s: %w", natTable, err)
	}
	return true, nil
}

// clearDNSRules removes the DNS redirect of plan's bridge and its opening
// in the input chain, and reports whether there were any.
func clearDNSRules(plan natPlan) (bool, error) {
	c, st, err := openNAT()
	if err != nil || !st.present {
		return false, err
	}
	t := natTableRef()
	n, err := syncRules(c, dnsChainRef(t), st.chains[dnsChain], nil, func(comment string) bool { return dnsRuleFor(comment, plan.bridge) })
	if err != nil {
		return false, err
	}
	dnsOpening := filterComment(plan.bridge, "input dns ")
	m, err := syncRules(c, filterChainOf(t, inputChain, nftables.ChainHookInput), st.chains[inputChain], nil,
		func(comment string) bool { return strings.HasPrefix(comment, dnsOpening) })
	if err != nil || n+m == 0 {
		return false, err
	}
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("remove the dns redirect of %s: %w", plan.bridge, err)
	}
	return true, nil
}
