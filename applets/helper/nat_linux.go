package helper

import (
	"fmt"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// banger's NAT lives in an nftables table of its own, "ip banger", with
// one postrouting nat chain and one masquerade rule per bridge:
//
//	ip saddr CIDR oifname != BRIDGE masquerade comment "banger BRIDGE CIDR"
//
// Nothing outside that table is read or changed.
const (
	natTable = "banger"
	natChain = "postrouting"
)

// ipForward is IPv4 forwarding of the helper's network namespace (a
// /proc/sys/net file is the namespace of whoever opens it).
const ipForward = "/proc/sys/net/ipv4/ip_forward"

func natTableRef() *nftables.Table {
	return &nftables.Table{Name: natTable, Family: nftables.TableFamilyIPv4}
}

func natChainRef(t *nftables.Table) *nftables.Chain {
	return &nftables.Chain{
		Name:     natChain,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	}
}

// openNAT connects to nftables and reads banger's rules (natRules).
func openNAT() (c *nftables.Conn, rules []*nftables.Rule, present bool, err error) {
	c, err = nftables.New()
	if err != nil {
		return nil, nil, false, fmt.Errorf("open nftables: %w", err)
	}
	rules, present, err = natRules(c)
	return c, rules, present, err
}

// natRules lists the rules of banger's chain; present is false when
// banger's table is not there.
func natRules(c *nftables.Conn) (rules []*nftables.Rule, present bool, err error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, false, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name != natTable {
			continue
		}
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
		if err != nil {
			return nil, true, fmt.Errorf("list nftables chains: %w", err)
		}
		for _, ch := range chains {
			if ch.Table.Name == natTable && ch.Name == natChain {
				rules, err := c.GetRules(natTableRef(), natChainRef(natTableRef()))
				if err != nil {
					return nil, true, fmt.Errorf("list the rules of %s %s: %w", natTable, natChain, err)
				}
				return rules, true, nil
			}
		}
		return nil, true, nil
	}
	return nil, false, nil
}

func ruleComment(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

// ensureMasquerade adds plan's rule unless it is there, and drops the
// bridge's rules for any other CIDR (the bridge carries plan's CIDR, so
// they are stale). It reports whether it changed anything.
func ensureMasquerade(plan natPlan) (bool, error) {
	c, rules, _, err := openNAT()
	if err != nil {
		return false, err
	}
	want := natComment(plan.bridge, plan.cidr)
	t := c.AddTable(natTableRef())
	ch := c.AddChain(natChainRef(t))
	found, changed := false, false
	for _, r := range rules {
		switch comment := ruleComment(r); {
		case comment == want && !found:
			found = true
		case comment == want || natRuleFor(comment, plan.bridge):
			if err := c.DelRule(&nftables.Rule{Table: t, Chain: ch, Handle: r.Handle}); err != nil {
				return false, fmt.Errorf("remove stale nat rule %q: %w", comment, err)
			}
			changed = true
		}
	}
	if !found {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: masquerade(plan), UserData: userdata.AppendString(nil, userdata.TypeComment, want)})
		changed = true
	}
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("add the masquerade rule for %s: %w", plan.cidr, err)
	}
	return changed, nil
}

// masquerade is `ip saddr CIDR oifname != BRIDGE masquerade`.
func masquerade(plan natPlan) []expr.Any {
	mask := make([]byte, 4)
	for i := range plan.cidr.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	network := plan.cidr.Addr().As4()
	ifname := make([]byte, unix.IFNAMSIZ)
	copy(ifname, plan.bridge)
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}, // saddr
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: network[:]},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname},
		&expr.Masq{},
	}
}

// clearMasquerade removes plan's rule, and banger's table once it holds no
// rule. It reports whether it changed anything.
func clearMasquerade(plan natPlan) (bool, error) {
	c, rules, present, err := openNAT()
	if err != nil || !present {
		return false, err
	}
	want := natComment(plan.bridge, plan.cidr)
	t := natTableRef()
	ch := natChainRef(t)
	left := 0
	for _, r := range rules {
		if ruleComment(r) != want {
			left++
			continue
		}
		if err := c.DelRule(&nftables.Rule{Table: t, Chain: ch, Handle: r.Handle}); err != nil {
			return false, fmt.Errorf("remove the masquerade rule for %s: %w", plan.cidr, err)
		}
	}
	if left == 0 {
		c.DelTable(t)
	}
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("remove the masquerade rule for %s: %w", plan.cidr, err)
	}
	return left < len(rules), nil
}

// deleteNATTable removes banger's table, and reports whether it was there.
func deleteNATTable() (bool, error) {
	c, _, present, err := openNAT()
	if err != nil || !present {
		return false, err
	}
	c.DelTable(natTableRef())
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("delete nftables table %s: %w", natTable, err)
	}
	return true, nil
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
