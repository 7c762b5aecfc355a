package usernet

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/inetaf/tcpproxy"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
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
	// udpIdle ends a UDP conversation nothing was sent on for this long.
	udpIdle = 90 * time.Second
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

// resolvConf is where the host's resolver is read, for the DNS relay.
var resolvConf = "/etc/resolv.conf"

// dialTarget is where a guest's connection to dst:port is dialed, and
// false when it is refused. The DNS address's port 53 is the host's
// resolver; the gateway is the host's loopback on an allowed port; the
// rest of the guest's own network, the addresses above and the host's
// own addresses are never dialed.
func (n *Network) dialTarget(dst netip.Addr, port uint16) (netip.AddrPort, bool) {
	switch {
	case dst == guestNet.DNS:
		if r, ok := hostResolver(); ok && port == 53 {
			return netip.AddrPortFrom(r, 53), true
		}
		return netip.AddrPort{}, false
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

// hostResolver is the first IPv4 nameserver of the host's resolv.conf,
// read at each query's flow: it changes as the host's networks do.
func hostResolver() (netip.Addr, bool) {
	f, err := os.Open(resolvConf)
	if err != nil {
		return netip.Addr{}, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if a, err := netip.ParseAddr(fields[1]); err == nil && a.Is4() {
				return a, true
			}
		}
	}
	return netip.Addr{}, false
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
func (n *Network) target(id stack.TransportEndpointID, proto string) (netip.AddrPort, bool) {
	dst := netip.AddrFrom4(id.LocalAddress.As4())
	to, ok := n.dialTarget(dst, id.LocalPort)
	if !ok {
		n.log.Debug().Str("proto", proto).Str("dst", netip.AddrPortFrom(dst, id.LocalPort).String()).Msg("guest connection refused")
	}
	return to, ok
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
		to, ok := n.target(r.ID(), "tcp")
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
		n.join(gonet.NewTCPConn(&wq, ep), func(context.Context) (net.Conn, error) { return out, nil })
	})
}

// join copies between a connection and the one dial makes, each way,
// until both are done (tcpproxy's half-closes and all).
func (n *Network) join(c net.Conn, dial func(context.Context) (net.Conn, error)) {
	p := tcpproxy.DialProxy{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		OnDialError: func(src net.Conn, err error) {
			n.log.Debug().Err(err).Msg("user network: dial failed")
			src.Close()
		},
	}
	p.HandleConn(c)
}

// udpForwarder relays each UDP conversation the guest starts. A refused
// one is not handled: the stack answers it port unreachable.
func (n *Network) udpForwarder() *udp.Forwarder {
	return udp.NewForwarder(n.stack, func(r *udp.ForwarderRequest) bool {
		to, ok := n.target(r.ID(), "udp")
		if !ok || !n.takeFlow() {
			return false
		}
		var wq waiter.Queue
		ep, terr := r.CreateEndpoint(&wq)
		if terr != nil {
			n.releaseFlow()
			return false
		}
		guest := gonet.NewUDPConn(&wq, ep)
		out, err := net.Dial("udp", to.String())
		if err != nil {
			guest.Close()
			n.releaseFlow()
			return true
		}
		go func() {
			defer n.releaseFlow()
			relayUDP(guest, out)
		}()
		return true
	})
}

// relayUDP copies datagrams both ways between two connected UDP sockets
// until neither has carried one for udpIdle, and closes both.
func relayUDP(a, b net.Conn) {
	defer a.Close()
	defer b.Close()
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	done := make(chan struct{}, 2)
	copyDatagrams := func(dst, src net.Conn) {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 65535)
		for {
			src.SetReadDeadline(time.Now().Add(udpIdle))
			k, err := src.Read(buf)
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() && time.Since(time.Unix(0, last.Load())) < udpIdle {
					continue // the other way carried some
				}
				return
			}
			last.Store(time.Now().UnixNano())
			dst.Write(buf[:k])
		}
	}
	go copyDatagrams(a, b)
	go copyDatagrams(b, a)
	<-done
}

// published is one port the network publishes.
type published struct {
	ln net.Listener
	f  Forward
}

// serve joins each connection to the published port to one to the
// guest's port, until the listener closes.
func (n *Network) serve(p *published) {
	to := tcpip.FullAddress{NIC: nicID, Addr: n.guest, Port: uint16(p.f.GuestPort)}
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go n.join(c, func(ctx context.Context) (net.Conn, error) {
			return gonet.DialContextTCP(ctx, n.stack, to, ipv4.ProtocolNumber)
		})
	}
}
