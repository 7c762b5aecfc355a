package helper

import (
	"fmt"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// banger's NAT lives in an nftables table of its own, "ip banger", with
// two nat chains. postrouting has one masquerade rule per bridge:
//
//	ip saddr CIDR oifname != BRIDGE masquerade comment "banger BRIDGE CIDR"
//
// and prerouting, when the daemon serves DNS to the guests, two redirect
// rules per bridge (udp and tcp), from port 53 of the bridge's own
// address to the unprivileged port the daemon listens on:
//
//	iifname BRIDGE ip daddr ADDR udp dport 53 redirect to :PORT comment "banger BRIDGE dns udp ADDR:53 redirect to :PORT"
//
// Nothing outside that table is read or changed.
const (
	natTable = "banger"
	natChain = "postrouting"
	dnsChain = "prerouting"
)

// ipForward is IPv4 forwarding of the helper's network namespace (a
// /proc/sys/net file is the namespace of whoever opens it).
const ipForward = "/proc/sys/net/ipv4/ip_forward"

func natTableRef() *nftables.Table {
	return &nftables.Table{Name: natTable, Family: nftables.TableFamilyIPv4}
}

func natChainRef(t *nftables.Table) *nftables.Chain {
	return natChainOf(t, natChain, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
}

func dnsChainRef(t *nftables.Table) *nftables.Chain {
	return natChainOf(t, dnsChain, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest)
}

func natChainOf(t *nftables.Table, name string, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: t, Type: nftables.ChainTypeNAT, Hooknum: hook, Priority: prio}
}

// natState is banger's table as read from the kernel.
type natState struct {
	present bool                        // the table is there
	chains  map[string][]*nftables.Rule // the rules of each of its chains
}

// openNAT connects to nftables and reads banger's table (readNAT).
func openNAT() (*nftables.Conn, natState, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, natState{}, fmt.Errorf("open nftables: %w", err)
	}
	st, err := readNAT(c)
	return c, st, err
}

// readNAT reads the chains of banger's table and their rules.
func readNAT(c *nftables.Conn) (natState, error) {
	st := natState{chains: map[string][]*nftables.Rule{}}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return st, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		st.present = st.present || t.Name == natTable
	}
	if !st.present {
		return st, nil
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return st, fmt.Errorf("list nftables chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name != natTable {
			continue
		}
		rules, err := c.GetRules(natTableRef(), &nftables.Chain{Name: ch.Name, Table: natTableRef()})
		if err != nil {
			return st, fmt.Errorf("list the rules of %s %s: %w", natTable, ch.Name, err)
		}
		st.chains[ch.Name] = rules
	}
	return st, nil
}

// natRules lists the rules of banger's postrouting chain; present is
// false when banger's table is not there.
func natRules(c *nftables.Conn) (rules []*nftables.Rule, present bool, err error) {
	st, err := readNAT(c)
	return st.chains[natChain], st.present, err
}

// rules counts the rules of every chain.
func (st natState) rules() int {
	n := 0
	for _, rs := range st.chains {
		n += len(rs)
	}
	return n
}

func ruleComment(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

// syncRules queues the changes that make chain ch hold each of want's
// rules (by comment) once, and no other rule that owned claims: stale
// rules of the same bridge are dropped, others' are left. It reports
// how many rules it queues to add or remove.
func syncRules(c *nftables.Conn, ch *nftables.Chain, rules []*nftables.Rule, want map[string][]expr.Any, owned func(comment string) bool) (int, error) {
	found := map[string]bool{}
	n := 0
	for _, r := range rules {
		comment := ruleComment(r)
		_, wanted := want[comment]
		switch {
		case wanted && !found[comment]:
			found[comment] = true
		case wanted || owned(comment):
			if err := c.DelRule(&nftables.Rule{Table: ch.Table, Chain: ch, Handle: r.Handle}); err != nil {
				return n, fmt.Errorf("remove stale nat rule %q: %w", comment, err)
			}
			n++
		}
	}
	for comment, exprs := range want {
		if !found[comment] {
			c.AddRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: exprs, UserData: userdata.AppendString(nil, userdata.TypeComment, comment)})
			n++
		}
	}
	return n, nil
}

// ensureMasquerade adds plan's masquerade rule, and its DNS redirect
// when it has a port, unless they are there, and drops the bridge's
// other rules (the bridge carries plan's CIDR, so they are stale). It
// reports whether it changed anything.
func ensureMasquerade(plan natPlan) (bool, error) {
	c, st, err := openNAT()
	if err != nil {
		return false, err
	}
	t := c.AddTable(natTableRef())
	post := c.AddChain(natChainRef(t))
	n, err := syncRules(c, post, st.chains[natChain], map[string][]expr.Any{natComment(plan.bridge, plan.cidr): masquerade(plan)},
		func(comment string) bool { return natRuleFor(comment, plan.bridge) })
	if err != nil {
		return false, err
	}
	want := dnsRedirects(plan)
	if len(want) > 0 || len(st.chains[dnsChain]) > 0 {
		pre := c.AddChain(dnsChainRef(t))
		m, err := syncRules(c, pre, st.chains[dnsChain], want, func(comment string) bool { return dnsRuleFor(comment, plan.bridge) })
		if err != nil {
			return false, err
		}
		n += m
	}
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("add the nat rules for %s: %w", plan.cidr, err)
	}
	return n > 0, nil
}

// masquerade is `ip saddr CIDR oifname != BRIDGE masquerade`.
func masquerade(plan natPlan) []expr.Any {
	return join(addrIn(12, plan.cidr), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(plan.bridge)},
		&expr.Masq{},
	})
}

// dnsRedirects are plan's DNS redirect rules by comment, none without a
// port: `iifname BRIDGE ip daddr ADDR udp dport 53 redirect to :PORT`,
// and the same for tcp.
func dnsRedirects(plan natPlan) map[string][]expr.Any {
	if plan.dnsPort == 0 {
		return nil
	}
	to := bridgeAddress(plan.cidr).Addr()
	rules := map[string][]expr.Any{}
	for _, p := range []struct {
		name  string
		proto byte
	}{{"udp", unix.IPPROTO_UDP}, {"tcp", unix.IPPROTO_TCP}} {
		rules[dnsComment(plan.bridge, p.name, to, plan.dnsPort)] = join(
			metaEq(expr.MetaKeyIIFNAME, ifname(plan.bridge)), daddrEq(to.As4()), l4Eq(p.proto), dportEq(53),
			[]expr.Any{
				&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(plan.dnsPort)},
				&expr.Redir{RegisterProtoMin: 1},
			})
	}
	return rules
}

// ifname is name as nftables compares interface names: IFNAMSIZ bytes,
// NUL padded.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// clearMasquerade removes plan's masquerade rule and every DNS redirect
// of its bridge, and banger's table once it holds no rule. It reports
// whether it changed anything.
func clearMasquerade(plan natPlan) (bool, error) {
	c, st, err := openNAT()
	if err != nil || !st.present {
		return false, err
	}
	t := natTableRef()
	want := natComment(plan.bridge, plan.cidr)
	n, err := syncRules(c, natChainRef(t), st.chains[natChain], nil, func(comment string) bool { return comment == want })
	if err != nil {
		return false, err
	}
	m, err := syncRules(c, dnsChainRef(t), st.chains[dnsChain], nil, func(comment string) bool { return dnsRuleFor(comment, plan.bridge) })
	if err != nil {
		return false, err
	}
	f, err := clearFilterRules(c, st, plan.bridge)
	if err != nil {
		return false, err
	}
	m += f
	// The last bridge gone, the forward guard goes too, and so does the
	// forwarding banger turned on.
	last := n+m == st.rules() || n+m == st.rules()-1 && st.guarded()
	if last {
		c.DelTable(t)
	}
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("remove the nat rules for %s: %w", plan.cidr, err)
	}
	if last && st.guarded() {
		if err := disableForwarding(); err != nil {
			return true, err
		}
	}
	return n+m > 0, nil
}

// guarded says whether banger's forward guard is there: banger turned
// IPv4 forwarding on.
func (st natState) guarded() bool {
	for _, r := range st.chains[forwardChain] {
		if ruleComment(r) == forwardGuard {
			return true
		}
	}
	return false
}

// deleteNATTable removes banger's table, and reports whether it was there.
func deleteNATTable() (bool, error) {
	c, st, err := openNAT()
	if err != nil || !st.present {
		return false, err
	}
	c.DelTable(natTableRef())
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("delete nftables table %s: %w", natTable, err)
	}
	if st.guarded() {
		return true, disableForwarding()
	}
	return true, nil
}

// forwardingOff says whether IPv4 forwarding is off in the helper's
// network namespace.
func forwardingOff() (bool, error) {
	b, err := os.ReadFile(ipForward)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", ipForward, err)
	}
	return strings.TrimSpace(string(b)) != "1", nil
}

// disableForwarding turns IPv4 forwarding off again, as it was before
// banger turned it on.
func disableForwarding() error {
	if err := os.WriteFile(ipForward, []byte("0\n"), 0o644); err != nil {
		return fmt.Errorf("disable IPv4 forwarding: %w", err)
	}
	return nil
}

// enableForwarding turns on IPv4 forwarding in the helper's network
// namespace, without which the bridge's guests reach nothing beyond the
// host. It reports whether it was off.
func enableForwarding() (bool, error) {
	b, err := os.ReadFile(ipForward)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", ipForward, err)
	}
	if strings.TrimSpace(string(b)) == "1" {
		return false, nil
	}
	if err := os.WriteFile(ipForward, []byte("1\n"), 0o644); err != nil {
		return false, fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	return true, nil
}
