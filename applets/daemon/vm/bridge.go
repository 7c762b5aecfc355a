package vm

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"banger/applets/daemon/operation"
	"banger/applets/daemon/state"
	"banger/applets/daemon/vmdns"
	"banger/internal/api"
	"banger/internal/privapi"
	"banger/logging"
	"banger/rpc"
)

// Bridged networking: a VM on banger's bridge through a tap of its own,
// with an address of its own. The root helper makes the bridge, the NAT
// rule and the taps (priv.*); the daemon decides names and addresses and
// records each tap before asking for it, so that a daemon that dies at
// any point leaves a record of every tap that may exist.
//
// Addresses: the bridge is the first host of the CIDR (the guests'
// gateway); VMs get the lowest free address from the second host up,
// held in the VM's row (state.AllocateAddress) from create to delete, so
// a VM keeps its address across boots.
//
// Names: the daemon answers NAME.vm for its bridged VMs (vmdns) on
// 127.0.0.1:PORT for the host and on GATEWAY:PORT for the guests, whose
// DNS to GATEWAY:53 the helper's NAT redirects there (the daemon is not
// root and cannot bind 53).
//
// Taps: "bgtap-" and 9 characters of the VM's id, made at each boot and
// removed when the VM stops, is deleted, or is found not running by a
// restarted daemon (reconcile). The bridge and the NAT rule stay when the
// last VM goes (cheap, shared); `banger network reset` removes them.

// Defaults of the bridge.
const (
	DefaultBridge     = api.DefaultBridge
	DefaultBridgeCIDR = "10.77.0.0/24"
)

// tapPrefix starts every tap name; the helper admits "bgtap-" and up to 9
// of [a-z0-9].
const tapPrefix = "bgtap-"

// BridgeNet is the bridge the daemon puts bridged VMs on.
type BridgeNet struct {
	name    string
	cidr    netip.Prefix
	gateway netip.Addr // the bridge's own address: the CIDR's first host
	first   netip.Addr // the range VMs get addresses from
	last    netip.Addr
	// dns is the name server bridged guests are given, none while it is
	// invalid: the gateway when the daemon serves NAME.vm (ServeDNS).
	dns netip.Addr
	// search is the guests' search domain with dns: "vm", so that NAME
	// resolves as NAME.vm.
	search string
	// dnsPort is where the responder listens on the gateway (and on
	// loopback); the helper redirects the guests' port 53 to it. 0: none.
	dnsPort uint16
}

// ParseBridgeNet checks a bridge CIDR as the helper does
// (api.ParseNetworkCIDR: a private IPv4 network, /16 to /30; the helper
// also wants it free of the host's routes, and says so when it is not).
func ParseBridgeNet(name, cidr string) (BridgeNet, error) {
	p, err := api.ParseNetworkCIDR(cidr)
	if err != nil {
		return BridgeNet{}, fmt.Errorf("bridge %w", err)
	}
	gw := p.Addr().Next()
	b := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	for i := range 4 {
		b[3-i] |= byte(host >> (8 * i))
	}
	broadcast := netip.AddrFrom4(b)
	return BridgeNet{name: name, cidr: p, gateway: gw, first: gw.Next(), last: broadcast.Prev()}, nil
}

// tapName is a VM's tap: "bgtap-" and the last 9 letters and digits of
// its id (the random end of a ULID), lowercase. The tap column's unique
// index turns the unlikely collision into an error, never a shared tap.
func tapName(vmID string) string {
	id := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r - 'A' + 'a'
		}
		return -1
	}, vmID)
	if len(id) > 9 {
		id = id[len(id)-9:]
	}
	return tapPrefix + id
}

// macAddress is a VM's stable MAC: locally administered, unicast, the
// rest from a hash of its id.
func macAddress(vmID string) string {
	h := sha256.Sum256([]byte(vmID))
	return fmt.Sprintf("02:%02x:%02x:%02x:%02x:%02x", h[0], h[1], h[2], h[3], h[4])
}

// checkNetwork validates a create's network: "" is user-mode; a bridge
// needs a helper, and publishes no ports (it has an address).
func (s *Service) checkNetwork(p api.VMCreate) (string, error) {
	switch p.Network {
	case "", api.NetworkUser:
		return api.NetworkUser, nil
	case api.NetworkBridge:
		if len(p.Publish) > 0 {
			return "", rpc.Errorf(rpc.CodeInvalidParams, "--publish is for --network user: a bridged VM is reached at its own address")
		}
		if len(p.AllowHost) > 0 {
			return "", rpc.Errorf(rpc.CodeInvalidParams, "--allow-host is for --network user: a bridged guest reaches the host's DNS on the bridge, and nothing else of it")
		}
		if !s.helper.Configured() {
			return "", rpc.Errorf(rpc.CodeUnavailable, "--network bridge needs the root helper, and this daemon runs without one (--helper none); use --network user, or run bangerd with a helper (banger system install sets one up)")
		}
		return api.NetworkBridge, nil
	}
	return "", rpc.Errorf(rpc.CodeInvalidParams, "network %q: want %s or %s", p.Network, api.NetworkUser, api.NetworkBridge)
}

// allocateStep gives a new bridged VM its address.
func (s *Service) allocateStep(name string) operation.Step {
	return operation.Step{Name: "allocate address", Do: func(ctx context.Context) error {
		a, err := s.db.AllocateAddress(ctx, name, s.bridge.first, s.bridge.last)
		if err == nil {
			logging.From(ctx).Debug().Str("vm", name).Str("address", a.String()).Msg("address allocated")
		}
		return err
	}, Undo: func(ctx context.Context) error {
		return s.db.ReleaseAddress(ctx, name)
	}}
}

// priv is the root helper's typed client.
func (s *Service) priv() privapi.Client { return privapi.Client{Caller: s.helper} }

// bridgeSteps come before a bridged VM's launch: the bridge and its NAT
// (idempotent, shared, never undone), then the VM's tap.
func (s *Service) bridgeSteps(name string) []operation.Step {
	return []operation.Step{
		{Name: "ensure bridge", Do: func(ctx context.Context) error {
			_, err := s.priv().EnsureBridge(ctx, privapi.Bridge{Name: s.bridge.name, CIDR: s.bridge.cidr.String()})
			return err
		}},
		{Name: "ensure nat", Do: func(ctx context.Context) error {
			return s.openDNS(ctx)
		}},
		{Name: "create tap", Do: func(ctx context.Context) error {
			return s.createTap(ctx, name)
		}, Undo: func(ctx context.Context) error {
			return s.removeTap(ctx, name)
		}},
	}
}

// createTap records the VM's tap, then asks the helper for it. The VM's
// address is checked first: one outside the bridge's network (the
// daemon's --bridge-cidr changed) is replaced.
func (s *Service) createTap(ctx context.Context, name string) error {
	if _, err := s.db.AllocateAddress(ctx, name, s.bridge.first, s.bridge.last); err != nil {
		return err
	}
	vm, err := s.db.UpdateVM(ctx, name, func(v *state.VM) error {
		v.Tap = tapName(v.ID)
		return nil
	})
	if err != nil {
		return err
	}
	// The helper pins the tap's guest to its MAC and address: it cannot
	// send as another guest, or as the gateway.
	if _, err := s.priv().CreateTap(ctx, privapi.Tap{Name: vm.Tap, Bridge: s.bridge.name, MAC: macAddress(vm.ID), Address: vm.Address}); err != nil {
		// A failed step is not undone: take back what may have been made
		// (delete_tap of a missing tap succeeds) and the record with it.
		if rerr := s.removeTap(context.WithoutCancel(ctx), name); rerr != nil {
			logging.From(ctx).Warn().Err(rerr).Str("vm", name).Msg("tap not removed after a failed create; it is removed later")
		}
		return fmt.Errorf("create tap %s: %w", vm.Tap, err)
	}
	return nil
}

// removeTap asks the helper to delete the VM's recorded tap, then forgets
// it. A VM with no tap recorded has nothing to remove.
func (s *Service) removeTap(ctx context.Context, name string) error {
	vm, err := s.db.GetVM(ctx, name)
	if err != nil || vm.Tap == "" {
		return err
	}
	if _, err := s.priv().DeleteTap(ctx, privapi.Tap{Name: vm.Tap}); err != nil {
		return fmt.Errorf("delete tap %s: %w", vm.Tap, err)
	}
	_, err = s.db.UpdateVM(ctx, name, func(v *state.VM) error { v.Tap = ""; return nil })
	return err
}

// LaunchTap is the bridged network of a VM about to boot.
func (s *Service) LaunchTap(vm state.VM) (*LaunchTap, error) {
	addr, err := netip.ParseAddr(vm.Address)
	if err != nil || vm.Tap == "" {
		return nil, fmt.Errorf("vm %s has no address or no tap (address %q, tap %q)", vm.Name, vm.Address, vm.Tap)
	}
	return &LaunchTap{Name: vm.Tap, MAC: macAddress(vm.ID), Address: netip.PrefixFrom(addr, s.bridge.cidr.Bits()),
		Gateway: s.bridge.gateway, DNS: s.bridge.dns, Search: s.bridge.search}, nil
}

// NetworkReset removes banger's taps, bridges and NAT through the helper.
// It refuses while a bridged VM runs or is being changed: their taps would
// go from under them.
func (s *Service) NetworkReset(ctx context.Context, _ rpc.NoParams) (api.NetworkResetResult, error) {
	if !s.helper.Configured() {
		return api.NetworkResetResult{}, rpc.Errorf(rpc.CodeUnavailable, "network reset needs the root helper, and this daemon runs without one (--helper none)")
	}
	vms, err := s.db.ListVMs(ctx)
	if err != nil {
		return api.NetworkResetResult{}, err
	}
	var inUse []string
	s.mu.Lock()
	for _, vm := range vms {
		if vm.Network != api.NetworkBridge {
			continue
		}
		if _, busy := s.busy[vm.Name]; busy || (vm.State != state.VMStopped && vm.State != state.VMFailed) {
			inUse = append(inUse, vm.Name)
		}
	}
	s.mu.Unlock()
	if len(inUse) > 0 {
		return api.NetworkResetResult{}, rpc.Errorf(rpc.CodeConflict, "bridged VMs are running or changing: %s; stop or delete them first", strings.Join(inUse, ", "))
	}
	res, err := s.priv().ResetNetwork(ctx)
	if err != nil {
		return res, err
	}
	// Every banger tap is gone: no record may say otherwise.
	for _, vm := range vms {
		if vm.Tap != "" {
			if _, err := s.db.UpdateVM(ctx, vm.Name, func(v *state.VM) error { v.Tap = ""; return nil }); err != nil {
				return res, err
			}
		}
	}
	logging.From(ctx).Info().Strs("removed", res.Removed).Bool("nat_table", res.NATTable).Msg("network reset")
	return res, nil
}

// DefaultDNSPort is where the daemon answers NAME.vm, on loopback and on
// the bridge's address: unprivileged, below Linux's ephemeral ports, and
// clear of mDNS (5353) and LLMNR (5355).
const DefaultDNSPort = 7753

// dnsLookupTimeout bounds one query's read of the state database.
const dnsLookupTimeout = 2 * time.Second

// ServeDNS starts the NAME.vm responder on 127.0.0.1:port and on the
// bridge's address, the same port (port 0: the one loopback gets), and
// records in b that bridged guests have it. It serves whether or not the
// bridge exists yet (vmdns binds a missing address) until stop. A VM is
// found by name in db, running or not: a bridged VM holds its address
// from create to delete.
func ServeDNS(ctx context.Context, log zerolog.Logger, port int, b *BridgeNet, db *state.DB) (stop func(), err error) {
	lookup := func(name string) (netip.Addr, bool) {
		ctx, cancel := context.WithTimeout(context.Background(), dnsLookupTimeout)
		defer cancel()
		return lookupVM(ctx, log, db, name)
	}
	srv, err := vmdns.Start(ctx, log, lookup, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	bound, err := netip.ParseAddrPort(srv.Addrs()[0])
	if err != nil {
		srv.Close()
		return nil, err
	}
	onBridge, err := vmdns.Start(ctx, log, lookup, netip.AddrPortFrom(b.gateway, bound.Port()).String())
	if err != nil {
		srv.Close()
		return nil, err
	}
	b.dns, b.search, b.dnsPort = b.gateway, strings.TrimSuffix(vmdns.Zone, "."), bound.Port()
	return func() { onBridge.Close(); srv.Close() }, nil
}

// lookupVM is the responder's view of the state database: the address of
// a bridged VM (none yet when it has none), or not found.
func lookupVM(ctx context.Context, log zerolog.Logger, db *state.DB, name string) (netip.Addr, bool) {
	vm, err := db.GetVM(ctx, name)
	if err != nil {
		if rpc.CodeOf(err) != rpc.CodeNotFound {
			log.Warn().Err(err).Str("vm", name).Msg("dns lookup failed")
		}
		return netip.Addr{}, false
	}
	if vm.Network != api.NetworkBridge {
		return netip.Addr{}, false
	}
	a, _ := netip.ParseAddr(vm.Address)
	return a, true
}

// dnsName is a bridged VM's name in DNS, "" for a VM on the user network.
func dnsName(vm state.VM) string {
	if vm.Network != api.NetworkBridge {
		return ""
	}
	return vm.Name + "." + strings.TrimSuffix(vmdns.Zone, ".")
}

// dnsCallTimeout bounds the helper calls that open and close the guests'
// DNS redirect at the daemon's start and stop.
const dnsCallTimeout = 10 * time.Second

// openDNS ensures the bridge's NAT, filter and DNS redirect, and marks
// the redirect as this daemon's to take away when it stops.
func (s *Service) openDNS(ctx context.Context) error {
	_, err := s.priv().EnsureNAT(ctx, privapi.NAT{Bridge: s.bridge.name, CIDR: s.bridge.cidr.String(), DNSPort: int(s.bridge.dnsPort)})
	if err == nil && s.bridge.dnsPort != 0 {
		s.dnsOpened.Store(true)
	}
	return err
}

// closeDNS takes the bridged guests' DNS redirect away as the daemon
// stops, when it made or found one: while no daemon listens on its port,
// another local user could, and answer the guests' DNS. (A daemon killed
// cannot: the next one to serve bridged VMs listens on it again, and
// takes it away when it stops.)
func (s *Service) closeDNS() {
	if !s.helper.Configured() || !s.dnsOpened.Load() {
		return
	}
	opID := rpc.NewOpID()
	ctx, cancel := context.WithTimeout(logging.WithOp(rpc.WithOpID(context.Background(), opID), s.log, opID, "shutdown"), dnsCallTimeout)
	defer cancel()
	_, err := s.priv().ClearDNS(ctx, privapi.NAT{Bridge: s.bridge.name, CIDR: s.bridge.cidr.String()})
	if err != nil {
		logging.From(ctx).Warn().Err(err).Msg("the guests' dns redirect is left: it points at a port no one serves now")
	}
}

// reopenDNS gives the bridged guests that outlived the last daemon their
// DNS again (a daemon that stops takes the redirect away).
func (s *Service) reopenDNS(ctx context.Context) {
	if !s.helper.Configured() || s.bridge.dnsPort == 0 {
		return
	}
	vms, err := s.db.ListVMs(ctx)
	if err != nil {
		return
	}
	for _, vm := range vms {
		if vm.Network == api.NetworkBridge && vm.State == state.VMRunning {
			ctx, cancel := context.WithTimeout(ctx, dnsCallTimeout)
			defer cancel()
			if err := s.openDNS(ctx); err != nil {
				logging.From(ctx).Warn().Err(err).Msg("the bridged guests get no dns until the next bridged create")
			}
			return
		}
	}
}
