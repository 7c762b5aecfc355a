// Package vmdns is the daemon's DNS responder for NAME.vm: it answers A
// records for bridged VMs, authoritatively, from a lookup the daemon
// hands it, on the bridge address (for the VMs) and on a loopback port
// (for the host).
//
// It is not a recursive resolver and must not become one: a name outside
// vm. is REFUSED, never forwarded, so the responder cannot be used to reach
// (or amplify towards) anything else. Clients that want other names keep
// their usual resolver and send only vm. here.
//
// The wire format, the UDP/TCP servers and truncation come from
// github.com/miekg/dns, the library CoreDNS is built on: well kept,
// fuzzed, and the parsing of hostile packets from VMs is the part we
// should not write ourselves. This package only decides the answers.
package vmdns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"
)

// Lookup returns the address of the VM called name (the label before
// .vm, in lower case). ok with an invalid address means the VM exists but
// has no address yet: its name answers with no records rather than
// NXDOMAIN. Lookup is called for every query, from many goroutines at
// once, so a VM created or deleted is seen at the next query.
type Lookup func(name string) (addr netip.Addr, ok bool)

// Server is a running responder. Its methods are safe for concurrent use.
type Server struct {
	log   zerolog.Logger
	addrs []string      // bound host:port, one per address given to Start
	srvs  []*dns.Server // a UDP and a TCP server per address

	closeOnce sync.Once
	closeErr  error
	closed    chan struct{} // closed by Close; ends the ctx watcher
}

// shutdownWait bounds how long Close waits for queries in flight (a
// Lookup that hangs, a TCP client that does not read).
const shutdownWait = 5 * time.Second

// Start serves DNS over UDP and TCP on each address (host:port; port 0
// picks a free port, the same for UDP and TCP, see Addrs). An address
// need not be the host's yet (IP_FREEBIND): a bridge's address answers
// once the bridge has it. It serves until Close or until ctx is done. A
// failure to bind any address closes what was bound and returns the
// error.
func Start(ctx context.Context, log zerolog.Logger, lookup Lookup, addrs ...string) (*Server, error) {
	if lookup == nil {
		return nil, errors.New("dns responder: no lookup")
	}
	if len(addrs) == 0 {
		return nil, errors.New("dns responder: no address")
	}
	h := &responder{lookup: lookup, log: log}
	s := &Server{log: log, closed: make(chan struct{})}
	for _, addr := range addrs {
		pc, l, err := listen(ctx, addr)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("dns responder: listen on %s: %w", addr, err)
		}
		bound := pc.LocalAddr().String()
		s.addrs = append(s.addrs, bound)
		err = s.serve(h, bound, &dns.Server{PacketConn: pc, UDPSize: udpSize})
		if err == nil {
			err = s.serve(h, bound, &dns.Server{Listener: l})
		} else {
			l.Close()
		}
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("dns responder: serve on %s: %w", addr, err)
		}
	}
	go func() {
		select {
		case <-ctx.Done():
			s.Close()
		case <-s.closed:
		}
	}()
	log.Info().Strs("addrs", s.addrs).Msg("dns responder started")
	return s, nil
}

// listen binds UDP and TCP on addr. With port 0 both must get the same
// port, so that one address names both: UDP takes a free port and TCP
// asks for it, again with a new port if some other socket holds it.
func listen(ctx context.Context, addr string) (net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	anyPort := port == "" || port == "0"
	lc := net.ListenConfig{Control: freebind}
	for try := 1; ; try++ {
		pc, err := lc.ListenPacket(ctx, "udp", addr)
		if err != nil {
			return nil, nil, err
		}
		bound := pc.LocalAddr().(*net.UDPAddr).Port
		l, err := lc.Listen(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(bound)))
		if err == nil {
			return pc, l, nil
		}
		pc.Close()
		if !anyPort || try == 10 || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, err
		}
	}
}

// serve runs srv on its socket and returns once it reads, or with the
// error that stopped it from starting (the socket is then closed).
func (s *Server) serve(h *responder, addr string, srv *dns.Server) error {
	srv.Handler = h
	srv.MsgAcceptFunc = h.accept
	srv.MsgInvalidFunc = h.invalid
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	failed := make(chan error, 1)
	go func() {
		// After Close, ActivateAndServe returns nil; an error is the
		// socket failing under us, and the address stops answering.
		if err := srv.ActivateAndServe(); err != nil {
			s.log.Error().Err(err).Str("addr", addr).Msg("dns responder stopped")
			failed <- err
		}
	}()
	select {
	case <-started:
		s.srvs = append(s.srvs, srv)
		return nil
	case err := <-failed:
		if srv.PacketConn != nil {
			srv.PacketConn.Close()
		}
		if srv.Listener != nil {
			srv.Listener.Close()
		}
		return err
	}
}

// Addrs returns the bound addresses (host:port), in the order Start was
// given them; each serves UDP and TCP.
func (s *Server) Addrs() []string {
	return slices.Clone(s.addrs)
}

// Close stops serving and frees the ports, waiting a little for queries
// in flight. Later calls return the first call's result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		var errs []error
		for _, srv := range s.srvs {
			ctx, cancel := context.WithTimeout(context.Background(), shutdownWait)
			if err := srv.ShutdownContext(ctx); err != nil {
				errs = append(errs, err)
			}
			cancel()
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}
