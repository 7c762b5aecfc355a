package vmdns

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"banger/logging"
)

// vms is a Lookup over a map the test changes, and what it was asked.
type vms struct {
	mu    sync.Mutex // guards addrs and asked
	addrs map[string]netip.Addr
	asked []string
}

func newVMs(kv ...string) *vms {
	v := &vms{addrs: map[string]netip.Addr{}}
	for i := 0; i < len(kv); i += 2 {
		v.set(kv[i], kv[i+1])
	}
	return v
}

func (v *vms) set(name, addr string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	a := netip.Addr{} // "" is a VM without an address yet
	if addr != "" {
		a = netip.MustParseAddr(addr)
	}
	v.addrs[name] = a
}

func (v *vms) remove(name string) {
	v.mu.Lock()
	delete(v.addrs, name)
	v.mu.Unlock()
}

func (v *vms) lookup(name string) (netip.Addr, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.asked = append(v.asked, name)
	a, ok := v.addrs[name]
	return a, ok
}

func (v *vms) lookups() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.asked)
}

func start(t *testing.T, log zerolog.Logger, lookup Lookup) *Server {
	t.Helper()
	s, err := Start(context.Background(), log, lookup, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func exchange(t *testing.T, network, addr string, q *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(q, addr)
	if err != nil {
		t.Fatalf("%s query %v: %v", network, q.Question, err)
	}
	return r
}

func query(t *testing.T, network, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	return exchange(t, network, addr, new(dns.Msg).SetQuestion(name, qtype))
}

// answerOf returns the one A or AAAA answer as text, "" for none.
func answerOf(t *testing.T, r *dns.Msg) string {
	t.Helper()
	switch len(r.Answer) {
	case 0:
		return ""
	case 1:
	default:
		t.Fatalf("%d answers: %v", len(r.Answer), r.Answer)
	}
	if r.Answer[0].Header().Ttl != TTL {
		t.Errorf("ttl %d, want %d", r.Answer[0].Header().Ttl, TTL)
	}
	switch rr := r.Answer[0].(type) {
	case *dns.A:
		return "A " + rr.A.String()
	case *dns.AAAA:
		return "AAAA " + rr.AAAA.String()
	case *dns.SOA:
		return "SOA " + rr.Hdr.Name
	}
	t.Fatalf("answer %v", r.Answer[0])
	return ""
}

func TestAnswers(t *testing.T) {
	v := newVMs("web", "10.77.0.2", "db", "10.77.0.3", "booting", "", "six", "fd00::6")
	s := start(t, zerolog.Nop(), v.lookup)
	cases := []struct {
		name   string
		qtype  uint16
		rcode  int
		aa     bool
		answer string
		soa    bool // the zone's SOA in the authority section
	}{
		{"web.vm.", dns.TypeA, dns.RcodeSuccess, true, "A 10.77.0.2", false},
		{"db.vm.", dns.TypeA, dns.RcodeSuccess, true, "A 10.77.0.3", false},
		{"WeB.VM.", dns.TypeA, dns.RcodeSuccess, true, "A 10.77.0.2", false},
		{"web.vm.", dns.TypeANY, dns.RcodeSuccess, true, "A 10.77.0.2", false},
		{"web.vm.", dns.TypeAAAA, dns.RcodeSuccess, true, "", true},
		{"web.vm.", dns.TypeMX, dns.RcodeSuccess, true, "", true},
		{"six.vm.", dns.TypeAAAA, dns.RcodeSuccess, true, "AAAA fd00::6", false},
		{"six.vm.", dns.TypeA, dns.RcodeSuccess, true, "", true},
		{"booting.vm.", dns.TypeA, dns.RcodeSuccess, true, "", true},
		{"nope.vm.", dns.TypeA, dns.RcodeNameError, true, "", true},
		{"nope.vm.", dns.TypeAAAA, dns.RcodeNameError, true, "", true},
		{"www.web.vm.", dns.TypeA, dns.RcodeNameError, true, "", true},
		{`we\.b.vm.`, dns.TypeA, dns.RcodeNameError, true, "", true},
		{"vm.", dns.TypeSOA, dns.RcodeSuccess, true, "SOA vm.", false},
		{"vm.", dns.TypeA, dns.RcodeSuccess, true, "", true},
		{"vm.", dns.TypeAXFR, dns.RcodeRefused, false, "", false},
		{"example.com.", dns.TypeA, dns.RcodeRefused, false, "", false},
		{"web.vm.example.com.", dns.TypeA, dns.RcodeRefused, false, "", false},
		{"vmm.", dns.TypeA, dns.RcodeRefused, false, "", false},
		{".", dns.TypeNS, dns.RcodeRefused, false, "", false},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, c := range cases {
			r := query(t, network, s.Addrs()[0], c.name, c.qtype)
			what := network + " " + c.name + " " + dns.Type(c.qtype).String()
			if r.Rcode != c.rcode || r.Authoritative != c.aa || r.RecursionAvailable || r.Truncated {
				t.Errorf("%s: rcode %s aa %v ra %v tc %v, want %s aa %v", what, dns.RcodeToString[r.Rcode],
					r.Authoritative, r.RecursionAvailable, r.Truncated, dns.RcodeToString[c.rcode], c.aa)
			}
			if got := answerOf(t, r); got != c.answer {
				t.Errorf("%s: answer %q, want %q", what, got, c.answer)
			}
			gotSOA := len(r.Ns) == 1 && r.Ns[0].Header().Rrtype == dns.TypeSOA && r.Ns[0].(*dns.SOA).Minttl == TTL
			if gotSOA != c.soa || (!c.soa && len(r.Ns) > 0) {
				t.Errorf("%s: authority %v", what, r.Ns)
			}
			if len(r.Question) != 1 || r.Question[0].Name != dns.Fqdn(c.name) {
				t.Errorf("%s: question %v", what, r.Question)
			}
		}
	}
	// A name without its final dot (only made by hand, never read off
	// the wire) is the same name.
	h := &responder{lookup: v.lookup, log: zerolog.Nop()}
	q := &dns.Msg{Question: []dns.Question{{Name: "Db.vm", Qtype: dns.TypeA, Qclass: dns.ClassINET}}}
	if got := answerOf(t, h.reply(q, true)); got != "A 10.77.0.3" {
		t.Errorf("db.vm without its dot: %q", got)
	}
	for _, name := range v.lookups() {
		if name != strings.ToLower(name) || strings.Contains(name, ".") {
			t.Errorf("lookup asked %q: want a lower-case VM name", name)
		}
	}
}

func TestLookupChangesAreSeenAtOnce(t *testing.T) {
	v := newVMs()
	s := start(t, zerolog.Nop(), v.lookup)
	addr := s.Addrs()[0]
	steps := []struct {
		change func()
		rcode  int
		answer string
	}{
		{func() {}, dns.RcodeNameError, ""},
		{func() { v.set("box", "10.77.0.9") }, dns.RcodeSuccess, "A 10.77.0.9"},
		{func() { v.remove("box") }, dns.RcodeNameError, ""},
		{func() { v.set("box", "10.77.0.10") }, dns.RcodeSuccess, "A 10.77.0.10"},
	}
	for i, st := range steps {
		st.change()
		r := query(t, "udp", addr, "box.vm.", dns.TypeA)
		if got := answerOf(t, r); r.Rcode != st.rcode || got != st.answer {
			t.Errorf("step %d: %s %q, want %s %q", i, dns.RcodeToString[r.Rcode], got, dns.RcodeToString[st.rcode], st.answer)
		}
	}
}

func TestFormatErrors(t *testing.T) {
	s := start(t, zerolog.Nop(), newVMs("web", "10.77.0.2").lookup)
	addr := s.Addrs()[0]

	two := new(dns.Msg).SetQuestion("web.vm.", dns.TypeA)
	two.Question = append(two.Question, dns.Question{Name: "web.vm.", Qtype: dns.TypeAAAA, Qclass: dns.ClassINET})
	for _, network := range []string{"udp", "tcp"} {
		if r := exchange(t, network, addr, two); r.Rcode != dns.RcodeFormatError || len(r.Answer) > 0 {
			t.Errorf("%s two questions: %s %v", network, dns.RcodeToString[r.Rcode], r.Answer)
		}
	}

	none := new(dns.Msg)
	none.Id = dns.Id()
	if r := exchange(t, "udp", addr, none); r.Rcode != dns.RcodeFormatError {
		t.Errorf("no question: %s", dns.RcodeToString[r.Rcode])
	}

	// A readable header and a question cut short.
	q, err := new(dns.Msg).SetQuestion("web.vm.", dns.TypeA).Pack()
	if err != nil {
		t.Fatal(err)
	}
	r := rawUDP(t, addr, q[:len(q)-3])
	if r == nil || r.Rcode != dns.RcodeFormatError || !r.Response {
		t.Errorf("cut question: %v", r)
	}

	// An update is not a query.
	up := new(dns.Msg).SetUpdate(Zone)
	if r := exchange(t, "udp", addr, up); r.Rcode != dns.RcodeNotImplemented {
		t.Errorf("update: %s", dns.RcodeToString[r.Rcode])
	}
}

// rawUDP sends b and returns the parsed reply, nil when none came.
func rawUDP(t *testing.T, addr string, b []byte) *dns.Msg {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		return nil
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf[:n]); err != nil {
		t.Fatalf("reply does not parse: %v", err)
	}
	return r
}

func TestEDNS(t *testing.T) {
	s := start(t, zerolog.Nop(), newVMs("web", "10.77.0.2").lookup)
	addr := s.Addrs()[0]

	q := new(dns.Msg).SetQuestion("web.vm.", dns.TypeA).SetEdns0(4096, true)
	r := exchange(t, "udp", addr, q)
	opt := r.IsEdns0()
	if r.Rcode != dns.RcodeSuccess || opt == nil || opt.UDPSize() != udpSize || opt.Do() || answerOf(t, r) != "A 10.77.0.2" {
		t.Errorf("edns query: %v", r)
	}

	q = new(dns.Msg).SetQuestion("web.vm.", dns.TypeA).SetEdns0(1232, false)
	q.IsEdns0().SetVersion(1)
	if r := exchange(t, "udp", addr, q); r.Rcode != dns.RcodeBadVers || len(r.Answer) > 0 || r.IsEdns0() == nil {
		t.Errorf("edns version 1: %s %v", dns.RcodeToString[r.Rcode], r)
	}
}

// TestReplyFitsTheLimit checks the cut directly: no real answer of this
// zone is near 512 bytes, so one is made too large by hand.
func TestReplyFitsTheLimit(t *testing.T) {
	h := &responder{lookup: newVMs("web", "10.77.0.2").lookup, log: zerolog.Nop()}
	q := new(dns.Msg).SetQuestion("web.vm.", dns.TypeA)
	m := h.reply(q, true)
	for len(m.Answer) < 100 {
		m.Answer = append(m.Answer, m.Answer[0])
	}
	m.Truncate(dns.MinMsgSize)
	b, err := m.Pack()
	if err != nil || len(b) > dns.MinMsgSize || !m.Truncated {
		t.Errorf("cut: %d bytes, tc %v, %v", len(b), m.Truncated, err)
	}
	for _, c := range []struct {
		edns  int // 0: no OPT
		udp   bool
		limit int
	}{{0, true, 512}, {100, true, 512}, {1000, true, 1000}, {4096, true, udpSize}, {0, false, dns.MaxMsgSize}} {
		q := new(dns.Msg).SetQuestion("web.vm.", dns.TypeA)
		if c.edns > 0 {
			q.SetEdns0(uint16(c.edns), false)
		}
		if got := limitOf(q, c.udp); got != c.limit {
			t.Errorf("limit(edns %d, udp %v) = %d, want %d", c.edns, c.udp, got, c.limit)
		}
	}
}

func TestCloseFreesThePorts(t *testing.T) {
	v := newVMs("web", "10.77.0.2")
	s, err := Start(context.Background(), zerolog.Nop(), v.lookup, "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addrs := s.Addrs()
	if len(addrs) != 2 || addrs[0] == addrs[1] {
		t.Fatalf("addrs %v", addrs)
	}
	for _, a := range addrs {
		query(t, "tcp", a, "web.vm.", dns.TypeA) // leaves nothing open
		query(t, "udp", a, "web.vm.", dns.TypeA)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	for _, a := range addrs {
		bindBoth(t, a)
	}
}

// bindBoth fails the test unless UDP and TCP on addr are free.
func bindBoth(t *testing.T, addr string) {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("udp port still held: %v", err)
	}
	pc.Close()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("tcp port still held: %v", err)
	}
	l.Close()
}

func TestContextEndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Start(ctx, zerolog.Nop(), newVMs().lookup, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := s.Addrs()[0]
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pc, err := net.ListenPacket("udp", addr)
		if err == nil {
			pc.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still serving after the context ended: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStartErrors(t *testing.T) {
	lookup := newVMs().lookup
	if _, err := Start(context.Background(), zerolog.Nop(), lookup); err == nil {
		t.Error("no address: no error")
	}
	if _, err := Start(context.Background(), zerolog.Nop(), nil, "127.0.0.1:0"); err == nil {
		t.Error("no lookup: no error")
	}
	if _, err := Start(context.Background(), zerolog.Nop(), lookup, "127.0.0.1"); err == nil {
		t.Error("no port: no error")
	}

	// The second address is taken (TCP only): the first must be let go.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := free.LocalAddr().String()
	free.Close()
	s, err := Start(context.Background(), zerolog.Nop(), lookup, freeAddr, busy.Addr().String())
	if err == nil {
		s.Close()
		t.Fatal("busy port: no error")
	}
	if !strings.Contains(err.Error(), busy.Addr().String()) {
		t.Errorf("error does not name the address: %v", err)
	}
	bindBoth(t, freeAddr)
}

// logRecords is a log destination that hands each record to the test,
// which waits for them: a query's record follows its reply.
type logRecords chan []byte

func (c logRecords) Write(p []byte) (int, error) {
	c <- slices.Clone(p)
	return len(p), nil
}

func (c logRecords) next(t *testing.T) map[string]any {
	t.Helper()
	select {
	case p := <-c:
		var rec map[string]any
		if err := json.Unmarshal(p, &rec); err != nil {
			t.Fatalf("log record %q: %v", p, err)
		}
		return rec
	case <-time.After(5 * time.Second):
		t.Fatal("no log record")
		return nil
	}
}

func TestOneDebugRecordPerQuery(t *testing.T) {
	recs := make(logRecords, 100)
	s := start(t, logging.New(recs, "test", zerolog.DebugLevel), newVMs("web", "10.77.0.2").lookup)
	if r := recs.next(t); r["level"] != "info" || r["msg"] != "dns responder started" {
		t.Errorf("start record: %v", r)
	}
	addr := s.Addrs()[0]
	steps := []struct {
		do   func()
		want map[string]any
	}{
		{func() { query(t, "udp", addr, "web.vm.", dns.TypeA) },
			map[string]any{"msg": "dns query", "proto": "udp", "name": "web.vm.", "qtype": "A", "rcode": "NOERROR", "answers": 1.0}},
		{func() { query(t, "tcp", addr, "nope.vm.", dns.TypeAAAA) },
			map[string]any{"msg": "dns query", "proto": "tcp", "name": "nope.vm.", "qtype": "AAAA", "rcode": "NXDOMAIN"}},
		{func() { query(t, "udp", addr, "example.com.", dns.TypeA) },
			map[string]any{"msg": "dns query", "rcode": "REFUSED"}},
		{func() { rawUDP(t, addr, []byte{1, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5}) }, // one question, cut short
			map[string]any{"msg": "dns query malformed", "bytes": 13.0}},
		{func() { rawUDP(t, addr, []byte{1, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0}) }, // two questions
			map[string]any{"msg": "dns query rejected", "questions": 2.0}},
	}
	for i, st := range steps {
		st.do()
		r := recs.next(t)
		if r["level"] != "debug" {
			t.Errorf("step %d: not at debug: %v", i, r)
		}
		for k, v := range st.want {
			if r[k] != v {
				t.Errorf("step %d: %s = %v, want %v (%v)", i, k, r[k], v, r)
			}
		}
	}
	select {
	case p := <-recs:
		t.Errorf("one record too many: %s", p)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestLookupPanicIsServerFailure(t *testing.T) {
	s := start(t, zerolog.Nop(), func(string) (netip.Addr, bool) { panic("lookup bug") })
	for range 2 { // and it keeps serving
		if r := query(t, "udp", s.Addrs()[0], "web.vm.", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
			t.Errorf("rcode %s", dns.RcodeToString[r.Rcode])
		}
	}
}

// A bridge's address is bound before the bridge has it (IP_FREEBIND):
// 192.0.2.1 (TEST-NET-1) is never the host's.
func TestStartBindsAnAddressTheHostLacks(t *testing.T) {
	s, err := Start(context.Background(), zerolog.Nop(), newVMs().lookup, "192.0.2.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if a := s.Addrs(); len(a) != 1 || !strings.HasPrefix(a[0], "192.0.2.1:") {
		t.Errorf("bound %v", a)
	}
}
