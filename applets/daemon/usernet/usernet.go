// Package usernet is a VM's user-mode network, which needs no root: the
// guest's Ethernet frames come from QEMU's stream netdev to a user-space
// TCP/IP stack in the daemon (gVisor's netstack), which dials the guest's
// connections from the host.
//
// The addresses are those QEMU's own user network gave (the guest at
// 10.0.2.15, a gateway at 10.0.2.2, DNS at 10.0.2.3, relayed to the
// host's resolver as QEMU's was), so guests and their configuration stay
// as they were. What changes is what a guest reaches.
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
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/rs/zerolog"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"banger/applets/agent/boot"
	"banger/internal/errdefs"
)

const (
	nicID = 1
	mtu   = 1500
	// queued bounds the frames waiting for the guest; more are dropped,
	// as a full NIC queue drops them.
	queued = 512
)

// gatewayMAC is QEMU's own: a guest restored from a snapshot taken on
// another network still has it in its neighbour table.
var gatewayMAC = tcpip.LinkAddress([]byte{0x52, 0x55, 0x0a, 0x00, 0x02, 0x02})

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
	guest tcpip.Address
	link  *channel.Endpoint
	stack *stack.Stack
	// flows holds a token for each open connection the guest made: a
	// guest cannot hold more host sockets than it has.
	flows chan struct{}

	mu        sync.Mutex // guards the fields below
	allowHost map[uint16]bool
	conn      net.Conn
	exposed   map[string]*published // by host side
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
		log:     cfg.Log,
		guest:   tcpip.AddrFrom4(guestNet.Address.Addr().As4()),
		link:    channel.New(queued, mtu+14, gatewayMAC),
		flows:   make(chan struct{}, maxFlows),
		exposed: map[string]*published{},
	}
	if err := n.AllowHost(cfg.AllowHost); err != nil {
		return nil, err
	}
	n.stack = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	if err := n.setUpStack(); err != nil {
		n.stack.Close()
		return nil, fmt.Errorf("user network: %w", err)
	}
	return n, nil
}

// setUpStack gives the stack an Ethernet card with the gateway's and the
// DNS relay's addresses, a route to the guest, and the forwarders that
// dial what the guest connects to.
func (n *Network) setUpStack() error {
	if err := n.stack.CreateNIC(nicID, ethernet.New(n.link)); err != nil {
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
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		err := n.receive(newFrameReader(conn))
		cancel()
		conn.Close()
		n.log.Debug().Err(err).Msg("user network detached")
		n.mu.Lock()
		if n.conn == conn {
			n.conn = nil
		}
		n.mu.Unlock()
	}()
	go n.send(ctx, conn)
	return nil
}

// receive gives the stack each frame the guest sends.
func (n *Network) receive(frames *frameReader) error {
	for {
		frame, err := frames.next()
		if err != nil {
			return err
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
		n.link.InjectInbound(0, pkt)
		pkt.DecRef()
	}
}

// send writes each frame the stack has for the guest, until ctx ends.
func (n *Network) send(ctx context.Context, conn net.Conn) {
	for {
		pkt := n.link.ReadContext(ctx)
		if pkt == nil {
			return
		}
		v := pkt.ToView()
		out := binary.BigEndian.AppendUint32(make([]byte, 0, 4+v.Size()), uint32(v.Size()))
		out = append(out, v.AsSlice()...)
		v.Release()
		pkt.DecRef()
		if _, err := conn.Write(out); err != nil {
			return
		}
	}
}

// AllowHost replaces the host loopback ports the guest reaches at the
// gateway address. Connections open on a port no longer allowed go on.
func (n *Network) AllowHost(ports []int) error {
	allow := map[uint16]bool{}
	for _, p := range ports {
		if p < 1 || p > 65535 {
			return errdefs.Errorf(errdefs.ErrInvalid, "allow-host port %d: want 1 to 65535", p)
		}
		allow[uint16(p)] = true
	}
	n.mu.Lock()
	n.allowHost = allow
	n.mu.Unlock()
	return nil
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
	for _, p := range n.exposed {
		p.ln.Close()
	}
	if n.conn != nil {
		n.conn.Close()
	}
	n.mu.Unlock()
	n.stack.Close()
	n.link.Close()
}
