// Package usernet is a VM's user-mode network, which needs no root: the
// guest's Ethernet frames come from QEMU's stream netdev to a user-space
// TCP/IP stack in the daemon (gVisor's netstack, as gvisor-tap-vsock
// assembles it), which dials the guest's connections from the host.
//
// The addresses are those QEMU's own user network gave (the guest at
// 10.0.2.15, a gateway at 10.0.2.2, DNS at 10.0.2.3), so guests and their
// configuration stay as they were. What changes is what a guest reaches.
// QEMU's network dialed 10.0.2.2 as the host's 127.0.0.1, and any address
// as the host would; this one dials only addresses outside the host (see
// egress.go): not its loopback, not its own addresses (so not other VMs'
// published ports), not link-local (the cloud metadata service). A VM
// reaches a host loopback port at 10.0.2.2 only when it was created to
// (Config.AllowHost).
//
// The network lives in the daemon: a daemon that restarts connects a new
// one to the running QEMU (the guest's open connections end; new ones
// work), as it does the agent link.
package usernet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"

	"github.com/containers/gvisor-tap-vsock/pkg/services/dns"
	"github.com/containers/gvisor-tap-vsock/pkg/services/forwarder"
	"github.com/containers/gvisor-tap-vsock/pkg/tap"
	"github.com/containers/gvisor-tap-vsock/pkg/types"
	"github.com/rs/zerolog"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"banger/applets/agent/boot"
	"banger/rpc"
)

const (
	nicID = 1
	mtu   = 1500
	// gatewayMAC is QEMU's own: a guest restored from a snapshot taken
	// on another network still has it in its neighbour table.
	gatewayMAC = "52:55:0a:00:02:02"
)

// Config is one VM's network.
type Config struct {
	// AllowHost lists the host loopback ports the guest reaches at the
	// gateway address (10.0.2.2:PORT is the host's 127.0.0.1:PORT).
	AllowHost []int
	Log       zerolog.Logger
}

// Network is one VM's user-mode network.
type Network struct {
	log   zerolog.Logger
	guest netip.Addr
	stack *stack.Stack
	sw    *tap.Switch
	ports *forwarder.PortsForwarder
	// flows holds a token for each open connection the guest made: a
	// guest cannot hold more host sockets than it has.
	flows chan struct{}

	mu        sync.Mutex // guards the fields below
	allowHost map[uint16]bool
	conn      net.Conn
	exposed   map[string]Forward // by host side
	closed    bool
}

// The guest's network, as its agent configures it.
var (
	guestNet = boot.UserNetwork()
	subnet   = guestNet.Address.Masked()
)

// New makes a VM's network. It carries frames once Attach gives it the
// VM's netdev connection; published ports listen from Expose on.
func New(cfg Config) (*Network, error) {
	n := &Network{
		log:       cfg.Log,
		allowHost: map[uint16]bool{},
		guest:     guestNet.Address.Addr(),
		flows:     make(chan struct{}, maxFlows),
		exposed:   map[string]Forward{},
	}
	if err := n.AllowHost(cfg.AllowHost); err != nil {
		return nil, err
	}
	useLogger(cfg.Log)
	link, err := tap.NewLinkEndpoint(false, mtu, gatewayMAC, guestNet.Gateway.String(), []string{guestNet.DNS.String()})
	if err != nil {
		return nil, fmt.Errorf("user network: %w", err)
	}
	n.sw = tap.NewSwitch(false)
	link.Connect(n.sw)
	n.sw.Connect(link)
	n.stack = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	if err := n.setUpStack(link); err != nil {
		n.stack.Close()
		return nil, fmt.Errorf("user network: %w", err)
	}
	n.ports = forwarder.NewPortsForwarder(n.stack)
	return n, nil
}

// setUpStack gives the stack the gateway's and the DNS server's
// addresses, a route to the guest, and the handlers that serve the
// guest: DNS, and the forwarders that dial what it connects to.
func (n *Network) setUpStack(link stack.LinkEndpoint) error {
	if err := n.stack.CreateNIC(nicID, link); err != nil {
		return errors.New(err.String())
	}
	for _, a := range []netip.Addr{guestNet.Gateway, guestNet.DNS} {
		pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddrFrom4(a.As4()).WithPrefix()}
		if err := n.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return errors.New(err.String())
		}
	}
	// Promiscuous and spoofing: the stack takes packets to any address
	// and answers from it, which is how it stands in for the internet.
	n.stack.SetSpoofing(nicID, true)
	n.stack.SetPromiscuousMode(nicID, true)
	sub, err := tcpip.NewSubnet(tcpip.AddrFrom4(subnet.Addr().As4()), tcpip.MaskFromBytes(net.CIDRMask(subnet.Bits(), 32)))
	if err != nil {
		return err
	}
	n.stack.SetRouteTable([]tcpip.Route{{Destination: sub, NIC: nicID}})
	n.stack.SetTransportProtocolHandler(tcp.ProtocolNumber, n.tcpForwarder().HandlePacket)
	n.stack.SetTransportProtocolHandler(udp.ProtocolNumber, n.udpForwarder().HandlePacket)
	return n.serveDNS()
}

// serveDNS answers the guest's queries at the DNS address with the
// host's resolver.
func (n *Network) serveDNS() error {
	at := tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(guestNet.DNS.As4()), Port: 53}
	udpConn, err := gonet.DialUDP(n.stack, &at, nil, ipv4.ProtocolNumber)
	if err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	tcpLn, err := gonet.ListenTCP(n.stack, at, ipv4.ProtocolNumber)
	if err != nil {
		udpConn.Close()
		return fmt.Errorf("dns: %w", err)
	}
	server, err := dns.New(udpConn, tcpLn, nil)
	if err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	// They end when the stack closes their endpoints.
	go server.Serve()
	go server.ServeTCP()
	return nil
}

// Attach carries frames between the stack and conn, QEMU's netdev
// socket, until either ends. A network has one connection at a time.
func (n *Network) Attach(conn net.Conn) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		conn.Close()
		return errors.New("user network: closed")
	}
	if n.conn != nil {
		conn.Close()
		return errors.New("user network: already attached")
	}
	n.conn = conn
	go func() {
		err := n.sw.Accept(context.Background(), guardFrames(conn), types.QemuProtocol)
		n.log.Debug().Err(err).Msg("user network detached")
		n.mu.Lock()
		if n.conn == conn {
			n.conn = nil
		}
		n.mu.Unlock()
	}()
	return nil
}

// Expose publishes f: its host port listens from now on, and each
// connection to it is one to the guest's port.
func (n *Network) Expose(f Forward) error {
	f = f.withDefaults()
	if err := f.Validate(); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return errors.New("user network: closed")
	}
	if _, ok := n.exposed[f.host()]; ok {
		return rpc.Errorf(rpc.CodeConflict, "host port %d (%s on %s) is already published by this VM", f.HostPort, f.Proto, f.HostAddr)
	}
	// Checked first: the forwarder's own error does not say the port is
	// taken.
	if err := f.checkFree(); err != nil {
		return err
	}
	remote := net.JoinHostPort(n.guest.String(), strconv.Itoa(f.GuestPort))
	if err := n.ports.Expose(types.TransportProtocol(f.Proto), f.local(), remote); err != nil {
		return fmt.Errorf("publish %s: %w", f, err)
	}
	n.exposed[f.host()] = f
	return nil
}

// Unexpose stops publishing f's host port; f's guest port does not
// matter. A port the VM does not publish is not_found.
func (n *Network) Unexpose(f Forward) error {
	f = f.withDefaults()
	if err := f.validateHost(); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.exposed[f.host()]; !ok {
		return rpc.Errorf(rpc.CodeNotFound, "remove port forward %s: the VM has no forward from host port %d", f.host(), f.HostPort)
	}
	delete(n.exposed, f.host())
	return n.ports.Unexpose(types.TransportProtocol(f.Proto), f.local())
}

// Close ends the network: its published ports, its connection to QEMU
// and every connection the guest made.
func (n *Network) Close() {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.closed = true
	for _, f := range n.exposed {
		n.ports.Unexpose(types.TransportProtocol(f.Proto), f.local())
	}
	if n.conn != nil {
		n.conn.Close()
	}
	n.mu.Unlock()
	n.stack.Close()
}

// AllowHost replaces the host loopback ports the guest reaches at the
// gateway address. Connections open on a port no longer allowed go on.
func (n *Network) AllowHost(ports []int) error {
	allow := map[uint16]bool{}
	for _, p := range ports {
		if p < 1 || p > 65535 {
			return rpc.Errorf(rpc.CodeInvalidParams, "allow-host port %d: want 1 to 65535", p)
		}
		allow[uint16(p)] = true
	}
	n.mu.Lock()
	n.allowHost = allow
	n.mu.Unlock()
	return nil
}
