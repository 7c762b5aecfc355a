package vmdns

import (
	"net"
	"net/netip"
	"runtime/debug"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"banger/logging"
)

// Zone is the domain the responder is the authority for.
const Zone = "vm."

// TTL is how long, in seconds, a resolver may keep an answer, a negative
// one too: VMs come and go within seconds, and a name looked up just
// before its VM was created must not stay unknown for long.
const TTL = 5

// udpSize is the largest UDP message the responder reads and sends with
// EDNS (the DNS flag day 2020 size, which avoids fragmentation).
const udpSize = 1232

// responder answers the queries; the servers hand it the parsed messages.
type responder struct {
	lookup Lookup
	log    zerolog.Logger
}

// ServeDNS answers one query and logs it at debug level.
func (h *responder) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	start := time.Now()
	udp := w.LocalAddr().Network() == "udp"
	defer func() {
		// A panic here (a bug, or in the daemon's Lookup) must not take
		// the daemon and its VMs down with one query, as net/http does.
		if v := recover(); v != nil {
			h.log.Error().Interface("panic", v).Bytes("stack", debug.Stack()).Msg("dns query panicked")
			w.WriteMsg(new(dns.Msg).SetRcode(r, dns.RcodeServerFailure))
		}
	}()
	m := h.reply(r, udp)
	if m == nil {
		return
	}
	err := w.WriteMsg(m)
	if e := h.log.Debug(); e != nil { // the fields cost, even unused
		logQuery(e, w, r, m, udp).Float64("duration_ms", logging.Millis(time.Since(start))).Err(err).Msg("dns query")
	}
}

// logQuery adds what a query's record says: who asked what, and the answer.
func logQuery(e *zerolog.Event, w dns.ResponseWriter, r, m *dns.Msg, udp bool) *zerolog.Event {
	proto := "tcp"
	if udp {
		proto = "udp"
	}
	e = e.Str("proto", proto).Str("remote", w.RemoteAddr().String())
	if len(r.Question) > 0 {
		e = e.Str("name", r.Question[0].Name).Str("qtype", dns.Type(r.Question[0].Qtype).String())
	}
	return e.Str("rcode", dns.RcodeToString[m.Rcode]).Int("answers", len(m.Answer)).Bool("truncated", m.Truncated)
}

// accept screens a query by its header, before it is parsed, as the
// library does by default (a query or notify, one question, no more
// records than those allow: FORMERR or NOTIMP otherwise, and nothing to
// a response), and logs what it turns away.
func (h *responder) accept(dh dns.Header) dns.MsgAcceptAction {
	a := dns.DefaultMsgAcceptFunc(dh)
	if a != dns.MsgAccept {
		h.log.Debug().Uint16("flags", dh.Bits).Uint16("questions", dh.Qdcount).Msg("dns query rejected")
	}
	return a
}

// invalid logs a message the library could not parse (it answers FORMERR
// itself when the header was readable, nothing when it was not).
func (h *responder) invalid(m []byte, err error) {
	h.log.Debug().Int("bytes", len(m)).Err(err).Msg("dns query malformed")
}

// reply returns the answer to r, cut to what the client can take (udp:
// its EDNS size, or 512 bytes), or nil when r must not be answered.
func (h *responder) reply(r *dns.Msg, udp bool) *dns.Msg {
	if r.Response {
		return nil // answering answers makes loops between responders
	}
	m := h.answer(r)
	m.Truncate(limitOf(r, udp))
	return m
}

// limitOf returns how large the reply to r may be: over TCP, any DNS
// message; over UDP, 512 bytes, or with EDNS the size the client gives,
// never more than udpSize.
func limitOf(r *dns.Msg, udp bool) int {
	if !udp {
		return dns.MaxMsgSize
	}
	if opt := r.IsEdns0(); opt != nil {
		return min(max(int(opt.UDPSize()), dns.MinMsgSize), udpSize)
	}
	return dns.MinMsgSize
}

// answer decides the response to the query r.
func (h *responder) answer(r *dns.Msg) *dns.Msg {
	m := new(dns.Msg).SetReply(r)
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(udpSize, false)
		if opt.Version() != 0 {
			m.Rcode = dns.RcodeBadVers
			return m
		}
	}
	switch {
	case r.Opcode != dns.OpcodeQuery:
		m.Rcode = dns.RcodeNotImplemented
		return m
	case len(r.Question) != 1:
		m.Question = nil
		m.Rcode = dns.RcodeFormatError
		return m
	}
	q := r.Question[0]
	name := dns.CanonicalName(q.Name)
	if q.Qclass != dns.ClassINET || !dns.IsSubDomain(Zone, name) {
		m.Rcode = dns.RcodeRefused
		return m
	}
	if q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR {
		m.Rcode = dns.RcodeRefused // the zone is the daemon's live state: no copies
		return m
	}
	return h.inZone(m, q, dns.SplitDomainName(name))
}

// inZone answers q, a question for a name under vm. (labels, in lower
// case), as the zone's authority.
func (h *responder) inZone(m *dns.Msg, q dns.Question, labels []string) *dns.Msg {
	m.Authoritative = true
	if len(labels) == 1 { // the apex, vm.
		if q.Qtype == dns.TypeSOA || q.Qtype == dns.TypeANY {
			m.Answer = []dns.RR{soa()}
		} else {
			m.Ns = []dns.RR{soa()}
		}
		return m
	}
	var addr netip.Addr
	found := false
	// Below a VM's name there is nothing, and a label with escaped bytes
	// is no VM name: Lookup never sees either.
	if len(labels) == 2 && !strings.Contains(labels[0], `\`) {
		addr, found = h.lookup(labels[0])
	}
	switch rr := record(q, addr); {
	case !found:
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{soa()}
	case rr != nil:
		m.Answer = []dns.RR{rr}
	default: // NODATA: the name is there, that type is not
		m.Ns = []dns.RR{soa()}
	}
	return m
}

// record returns the A (or AAAA) record of addr that answers q, or nil.
func record(q dns.Question, addr netip.Addr) dns.RR {
	addr = addr.Unmap()
	hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: TTL}
	switch {
	case addr.Is4() && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY):
		hdr.Rrtype = dns.TypeA
		return &dns.A{Hdr: hdr, A: net.IP(addr.AsSlice())}
	case addr.Is6() && (q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY):
		hdr.Rrtype = dns.TypeAAAA
		return &dns.AAAA{Hdr: hdr, AAAA: net.IP(addr.AsSlice())}
	}
	return nil
}

// soa is the zone's start of authority, sent with negative answers so
// resolvers cache them for TTL seconds at most (RFC 2308).
func soa() *dns.SOA {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: Zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: TTL},
		Ns:      "ns." + Zone,
		Mbox:    "hostmaster." + Zone,
		Serial:  1,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  TTL,
	}
}
