package vmdns

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"
)

// FuzzQuery feeds bytes to the responder twice: parsed and handed to
// reply (every reply must pack, fit its limit and answer the query's id),
// and as a UDP packet to a running server, which must still answer the
// next query.
func FuzzQuery(f *testing.F) {
	v := newVMs("web", "10.77.0.2", "six", "fd00::6", "booting", "")
	s, err := Start(context.Background(), zerolog.Nop(), v.lookup, "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	conn, err := net.Dial("udp", s.Addrs()[0])
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { conn.Close() })
	h := &responder{lookup: v.lookup, log: zerolog.Nop()}

	two := new(dns.Msg).SetQuestion("web.vm.", dns.TypeA)
	two.Question = append(two.Question, two.Question[0])
	answered := new(dns.Msg).SetQuestion("web.vm.", dns.TypeA)
	answered.Response = true
	for _, m := range []*dns.Msg{
		new(dns.Msg).SetQuestion("web.vm.", dns.TypeA),
		new(dns.Msg).SetQuestion("SIX.vm.", dns.TypeANY).SetEdns0(600, true),
		new(dns.Msg).SetQuestion("booting.vm.", dns.TypeAAAA),
		new(dns.Msg).SetQuestion(`a\.b\000.web.vm.`, dns.TypeTXT),
		new(dns.Msg).SetQuestion("example.com.", dns.TypeA),
		new(dns.Msg).SetQuestion("vm.", dns.TypeSOA),
		new(dns.Msg).SetUpdate(Zone),
		two,
		answered,
	} {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)-1])
	}
	f.Add([]byte{})
	f.Add(make([]byte, 12))

	f.Fuzz(func(t *testing.T, b []byte) {
		if r := new(dns.Msg); r.Unpack(b) == nil {
			for _, udp := range []bool{true, false} {
				checkReply(t, r, h.reply(r, udp), udp)
			}
		}
		conn.Write(b) // too large for UDP is an error, and fine
		alive(t, conn)
	})
}

func checkReply(t *testing.T, r, m *dns.Msg, udp bool) {
	t.Helper()
	if m == nil {
		if !r.Response {
			t.Fatalf("no reply to %v", r)
		}
		return
	}
	out, err := m.Pack()
	if err != nil {
		t.Fatalf("reply does not pack: %v\n%v", err, m)
	}
	if len(out) > limitOf(r, udp) {
		t.Fatalf("reply of %d bytes, limit %d", len(out), limitOf(r, udp))
	}
	if m.Id != r.Id || !m.Response || m.RecursionAvailable || len(m.Question) > 1 {
		t.Fatalf("reply header: %v", m)
	}
}

// alive fails unless the server at the other end of conn answers a query
// (skipping the replies to what came before).
func alive(t *testing.T, conn net.Conn) {
	t.Helper()
	probe := new(dns.Msg).SetQuestion("web.vm.", dns.TypeA)
	b, err := probe.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65536)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no answer after the packet: %v", err)
		}
		r := new(dns.Msg)
		if r.Unpack(buf[:n]) == nil && r.Id == probe.Id && len(r.Answer) == 1 {
			return
		}
	}
}
