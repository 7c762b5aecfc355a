package usernet

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/containers/gvisor-tap-vsock/pkg/services/forwarder"
	"github.com/inetaf/tcpproxy"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

const (
	// maxFlows bounds the connections (TCP) and conversations (UDP) one
	// guest has open through the host at once.
	maxFlows = 512
	// maxHandshakes bounds the TCP connections being dialed at once.
	maxHandshakes = 64
	dialTimeout   = 20 * time.Second
)

// Addresses no guest connection is dialed to, whoever asks: they are
// this host (or "this network", which Linux dials as the host), or
// nothing routable.
var neverDialed = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"), // link-local: the cloud metadata service
	netip.MustParsePrefix("224.0.0.0/4"),    // multicast
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved, and the broadcast address
}

// dialTarget is where a guest's connection to dst:port is dialed, and
// false when it is refused: the gateway is the host's loopback on an
// allowed port; the rest of the guest's own network, the addresses above
// and the host's own addresses are never dialed.
func (n *Network) dialTarget(dst netip.Addr, port uint16) (netip.AddrPort, bool) {
	switch {
	case dst == guestNet.Gateway:
		n.mu.Lock()
		allowed := n.allowHost[port]
		n.mu.Unlock()
		if allowed {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port), true
		}
		return netip.AddrPort{}, false
	case subnet.Contains(dst), !dst.Is4():
		return netip.AddrPort{}, false
	}
	for _, p := range neverDialed {
		if p.Contains(dst) {
			return netip.AddrPort{}, false
		}
	}
	if isHostAddress(dst) {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(dst, port), true
}

// isHostAddress says whether a is one of this host's addresses now (a
// service bound to 0.0.0.0 answers on each). Asked at each dial: the
// host's addresses change as its networks do.
func isHostAddress(a netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		// Not knowing the host's addresses, dial none.
		return true
	}
	for _, ia := range addrs {
		if ipn, ok := ia.(*net.IPNet); ok {
			if h, ok := netip.AddrFromSlice(ipn.IP); ok && h.Unmap() == a {
				return true
			}
		}
	}
	return false
}

// target is dialTarget of a guest packet's destination, and a record
// of each refusal.
func (n *Network) target(id stackID, proto string) (netip.AddrPort, bool) {
	dst := netip.AddrFrom4(id.LocalAddress.As4())
	to, ok := n.dialTarget(dst, id.LocalPort)
	if !ok {
		n.log.Debug().Str("proto", proto).Str("dst", netip.AddrPortFrom(dst, id.LocalPort).String()).Msg("guest connection refused")
	}
	return to, ok
}

type stackID = struct {
	LocalPort     uint16
	LocalAddress  tcpip.Address
	RemotePort    uint16
	RemoteAddress tcpip.Address
}

// takeFlow reserves one of the guest's flows; false when it has all.
func (n *Network) takeFlow() bool {
	select {
	case n.flows <- struct{}{}:
		return true
	default:
		n.log.Debug().Int("flows", maxFlows).Msg("guest connection refused: too many open")
		return false
	}
}

func (n *Network) releaseFlow() { <-n.flows }

// tcpForwarder dials each TCP connection the guest opens and joins the
// two. A refused one is answered with a reset, as a closed port would be.
func (n *Network) tcpForwarder() *tcp.Forwarder {
	return tcp.NewForwarder(n.stack, 0, maxHandshakes, func(r *tcp.ForwarderRequest) {
		to, ok := n.target(stackID(r.ID()), "tcp")
		if !ok || !n.takeFlow() {
			r.Complete(true)
			return
		}
		defer n.releaseFlow()
		out, err := net.DialTimeout("tcp", to.String(), dialTimeout)
		if err != nil {
			r.Complete(true)
			return
		}
		var wq waiter.Queue
		ep, terr := r.CreateEndpoint(&wq)
		r.Complete(false)
		if terr != nil {
			out.Close()
			return
		}
		proxy := tcpproxy.DialProxy{DialContext: func(context.Context, string, string) (net.Conn, error) { return out, nil }}
		proxy.HandleConn(gonet.NewTCPConn(&wq, ep))
	})
}

// udpForwarder relays each UDP conversation the guest starts, until it
// is idle for the forwarder's timeout.
func (n *Network) udpForwarder() *udp.Forwarder {
	return udp.NewForwarder(n.stack, func(r *udp.ForwarderRequest) {
		to, ok := n.target(stackID(r.ID()), "udp")
		if !ok || !n.takeFlow() {
			return
		}
		var wq waiter.Queue
		ep, terr := r.CreateEndpoint(&wq)
		if terr != nil {
			n.releaseFlow()
			return
		}
		p, err := forwarder.NewUDPProxy(idleUDP{gonet.NewUDPConn(&wq, ep)}, func() (net.Conn, error) {
			return net.Dial("udp", to.String())
		})
		if err != nil {
			ep.Close()
			n.releaseFlow()
			return
		}
		go func() {
			defer n.releaseFlow()
			p.Run()
			ep.Close()
		}()
	})
}

// idleUDP ends a conversation's guest side once it is idle: each read
// and write pushes its deadline on.
type idleUDP struct{ *gonet.UDPConn }

func (c idleUDP) ReadFrom(b []byte) (int, net.Addr, error) {
	c.SetReadDeadline(time.Now().Add(forwarder.UDPConnTrackTimeout))
	return c.UDPConn.ReadFrom(b)
}

func (c idleUDP) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.SetReadDeadline(time.Now().Add(forwarder.UDPConnTrackTimeout))
	return c.UDPConn.WriteTo(b, addr)
}
