package helper

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"banger/internal/privapi"
	"banger/rpc"
)

// network serves the helper's network methods in the helper's network
// namespace. Each method checks its params with the rules of policy.go
// first, and changes nothing that is not banger's.
type network struct {
	owner uint32   // the uid that owns the taps: the engine opens them as it
	view  hostView // what the rules read of the host
	// lock serializes the methods, in this process and across helper
	// processes (sudo mode runs one per call): each reads the host,
	// decides, then changes it, and two at once could both decide to
	// create.
	lock *hostLock
}

// newNetwork serves the network methods, taking the flock on lockFile
// around each.
func newNetwork(owner uint32, lockFile string) *network {
	return &network{owner: owner, view: kernelView{}, lock: &hostLock{path: lockFile}}
}

// checkThen makes a method of a network op: with the lock held, the
// params go through their check, and only a checked plan reaches act.
func checkThen[P, Plan, R any](n *network, check func(hostView, P) (Plan, error), act func(Plan) (R, error)) rpc.Handler {
	return rpc.Handle(func(ctx context.Context, p P) (R, error) {
		var zero R
		release, err := n.lock.acquire(ctx)
		if err != nil {
			return zero, err
		}
		defer release()
		plan, err := check(n.view, p)
		if err != nil {
			return zero, err
		}
		return act(plan)
	})
}

func (n *network) ensureBridge(plan bridgePlan) (privapi.BridgeResult, error) {
	res := privapi.BridgeResult{Name: plan.name, Address: plan.addr.String()}
	mac, err := net.ParseMAC(plan.mac)
	if err != nil {
		return res, err
	}
	if plan.link == nil {
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: plan.name, HardwareAddr: mac}}); err != nil {
			return res, fmt.Errorf("create bridge %s: %w", plan.name, err)
		}
		res.Changed = true
		plan.link = &hostLink{Name: plan.name, MAC: plan.mac}
	}
	changed, err := fixLink(plan.name,
		fix{plan.link.MAC != plan.mac, "set the hardware address of", func(l netlink.Link) error {
			return netlink.LinkSetHardwareAddr(l, mac)
		}},
		fix{len(plan.link.Addrs) == 0, "add " + plan.addr.String() + " to", func(l netlink.Link) error {
			return netlink.AddrAdd(l, &netlink.Addr{IPNet: ipNet(plan.addr)})
		}},
		fix{!plan.link.Up, "bring up", netlink.LinkSetUp},
	)
	res.Changed = res.Changed || changed
	return res, err
}

func (n *network) createTap(plan tapPlan) (privapi.TapResult, error) {
	res := privapi.TapResult{Name: plan.name, Bridge: plan.bridge.Name, Owner: n.owner}
	// Pinned before it is up: no frame of its guest goes unchecked.
	pinned, err := pinTap(plan)
	if err != nil {
		return res, err
	}
	res.Changed = pinned
	if plan.link == nil {
		// Persistent, one queue, exclusive create (netlink's defaults);
		// the engine sets its own flags (vnet_hdr, no_pi) when it opens
		// the tap as its owner.
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: plan.name, MasterIndex: plan.bridge.Index},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Owner:     n.owner,
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return res, fmt.Errorf("create tap %s: %w", plan.name, err)
		}
		res.Changed = true
		plan.link = &hostLink{Name: plan.name, Owner: n.owner, Master: plan.bridge.Index}
	}
	if plan.link.Owner != n.owner {
		return res, rpc.Errorf(rpc.CodeConflict, "tap %s exists and belongs to uid %d, not %d; delete it first", plan.name, plan.link.Owner, n.owner)
	}
	changed, err := fixLink(plan.name,
		fix{plan.link.Master != plan.bridge.Index, "attach to " + plan.bridge.Name, func(l netlink.Link) error {
			return netlink.LinkSetMasterByIndex(l, plan.bridge.Index)
		}},
		fix{!plan.link.Up, "bring up", netlink.LinkSetUp},
	)
	res.Changed = res.Changed || changed
	return res, err
}

func (n *network) deleteTap(plan tapPlan) (privapi.TapResult, error) {
	res := privapi.TapResult{Name: plan.name}
	unpinned, err := unpinTap(plan.name)
	if err != nil {
		return res, err
	}
	res.Changed = unpinned
	if plan.link == nil {
		return res, nil
	}
	res.Owner = plan.link.Owner
	if err := deleteLink(plan.link.Index, plan.name); err != nil {
		return res, fmt.Errorf("delete tap %s: %w", plan.name, err)
	}
	res.Changed = true
	return res, nil
}

func (n *network) ensureNAT(plan natPlan) (privapi.NATResult, error) {
	res := privapi.NATResult{Bridge: plan.bridge, CIDR: plan.cidr.String()}
	changed, err := ensureMasquerade(plan)
	if err != nil {
		return res, err
	}
	// The filter before forwarding: no guest packet is routed unfiltered.
	wasOff, err := forwardingOff()
	if err != nil {
		return res, err
	}
	filtered, err := ensureFilter(plan, wasOff)
	if err != nil {
		return res, err
	}
	fwd, err := enableForwarding()
	if err != nil {
		return res, err
	}
	res.Changed = changed || filtered || fwd
	return res, nil
}

func (n *network) clearDNS(plan natPlan) (privapi.NATResult, error) {
	res := privapi.NATResult{Bridge: plan.bridge, CIDR: plan.cidr.String()}
	var err error
	res.Changed, err = clearDNSRules(plan)
	return res, err
}

func (n *network) clearNAT(plan natPlan) (privapi.NATResult, error) {
	res := privapi.NATResult{Bridge: plan.bridge, CIDR: plan.cidr.String()}
	var err error
	res.Changed, err = clearMasquerade(plan)
	return res, err
}

// resetNetwork removes every banger tap, then every banger bridge, then
// banger's nftables table. IPv4 forwarding is left as it is: other
// things on the host may rely on it.
func (n *network) resetNetwork(ctx context.Context, _ rpc.NoParams) (privapi.ResetResult, error) {
	res := privapi.ResetResult{Removed: []string{}}
	release, err := n.lock.acquire(ctx)
	if err != nil {
		return res, err
	}
	defer release()
	links, err := listLinks()
	if err != nil {
		return res, err
	}
	for _, kind := range []string{"tap", "bridge"} {
		for _, l := range links {
			if l.Kind != kind || !isBangerLink(l) {
				continue
			}
			if err := deleteLink(l.Index, l.Name); err != nil {
				return res, fmt.Errorf("delete %s %s: %w", kind, l.Name, err)
			}
			res.Removed = append(res.Removed, l.Name)
		}
	}
	res.NATTable, err = deleteNATTable()
	if err != nil {
		return res, err
	}
	pins, err := deletePinTable()
	res.Changed = len(res.Removed) > 0 || res.NATTable || pins
	return res, err
}

// fix is one change to a link, made when need is true.
type fix struct {
	need bool
	what string // "bring up": the error says "bring up NAME: ..."
	do   func(netlink.Link) error
}

// fixLink makes the fixes to the link called name that are needed, in
// order, and reports whether it made any.
func fixLink(name string, fixes ...fix) (bool, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return false, fmt.Errorf("find %s: %w", name, err)
	}
	changed := false
	for _, f := range fixes {
		if !f.need {
			continue
		}
		if err := f.do(link); err != nil {
			return changed, fmt.Errorf("%s %s: %w", f.what, name, err)
		}
		changed = true
	}
	return changed, nil
}

// kernelView reads the host through netlink.
type kernelView struct{}

func (kernelView) routes() ([]hostRoute, error) {
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	names := map[int]string{}
	out := make([]hostRoute, 0, len(rs))
	for _, r := range rs {
		if r.Dst == nil {
			continue // a default route
		}
		dst, ok := prefixOf(r.Dst)
		if !ok {
			continue
		}
		dev, seen := names[r.LinkIndex]
		if !seen && r.LinkIndex > 0 {
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				dev = l.Attrs().Name
			}
			names[r.LinkIndex] = dev
		}
		out = append(out, hostRoute{Dst: dst, Dev: dev})
	}
	return out, nil
}

func (kernelView) link(name string) (hostLink, bool, error) {
	l, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		return hostLink{}, false, nil
	case err != nil:
		return hostLink{}, false, fmt.Errorf("find link %s: %w", name, err)
	}
	hl, err := describe(l)
	return hl, err == nil, err
}

// listLinks reads every link of the namespace.
func listLinks() ([]hostLink, error) {
	ls, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := make([]hostLink, 0, len(ls))
	for _, l := range ls {
		hl, err := describe(l)
		if err != nil {
			return nil, err
		}
		out = append(out, hl)
	}
	return out, nil
}

func describe(l netlink.Link) (hostLink, error) {
	a := l.Attrs()
	hl := hostLink{Name: a.Name, Index: a.Index, Kind: l.Type(), Master: a.MasterIndex, Up: a.Flags&net.FlagUp != 0, MAC: a.HardwareAddr.String()}
	if t, ok := l.(*netlink.Tuntap); ok {
		hl.Kind, hl.Owner = "tun", t.Owner
		if t.Mode == netlink.TUNTAP_MODE_TAP {
			hl.Kind = "tap"
		}
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return hostLink{}, fmt.Errorf("list addresses of %s: %w", a.Name, err)
	}
	for _, ad := range addrs {
		if p, ok := prefixOf(ad.IPNet); ok {
			hl.Addrs = append(hl.Addrs, p)
		}
	}
	return hl, nil
}

// deleteLink removes the link the caller checked, by its index, and only
// if it still has the name the caller checked.
func deleteLink(index int, name string) error {
	l, err := netlink.LinkByIndex(index)
	if err != nil {
		return err
	}
	if l.Attrs().Name != name {
		return rpc.Errorf(rpc.CodeConflict, "link %d is now %s, not %s; not deleted", index, l.Attrs().Name, name)
	}
	return netlink.LinkDel(l)
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(n.IP.To4())
	if !ok || n.IP.To4() == nil {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits != 32 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip, ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
