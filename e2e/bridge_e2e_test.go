package e2e_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	nsh "github.com/vishvananda/netns"

	"banger/applets/daemon/vm"
	"banger/internal/api"
	"banger/internal/privapi"
)

// Bridged networking end to end, with real guests: the root helper and
// the daemon run inside a network namespace of the test's own, so the
// bridge, the taps, the NAT table and ip_forward are the namespace's,
// never the host's. QEMU, started by the daemon, opens its tap there.

// netns is a network namespace the test made, deleted when it ends.
type netns struct {
	t    testing.TB
	name string
}

func newNetns(t testing.TB) *netns {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8) (iproute2) to make a network namespace")
	}
	suffix := make([]byte, 4)
	rand.Read(suffix)
	ns := &netns{t: t, name: "bangere2e-" + hex.EncodeToString(suffix)}
	if out, err := exec.Command("ip", "netns", "add", ns.name).CombinedOutput(); err != nil {
		t.Skipf("cannot make a network namespace: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns.name, err, out)
		}
	})
	ns.ip("link", "set", "lo", "up")
	return ns
}

// ip runs `ip -n NS args...` and returns its output.
func (ns *netns) ip(args ...string) string {
	ns.t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", ns.name}, args...)...).CombinedOutput()
	if err != nil {
		ns.t.Fatalf("ip -n %s %v: %v: %s", ns.name, args, err, out)
	}
	return string(out)
}

// exec runs a command inside the namespace.
func (ns *netns) exec(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns.name}, args...)...).CombinedOutput()
	return string(out), err
}

// wantName asks the daemon's loopback DNS port, from inside the
// namespace, for name's A record: want is the address, "" for NXDOMAIN.
func (ns *netns) wantName(t *testing.T, name, want string) {
	t.Helper()
	var r *dns.Msg
	err := ns.do(func() (err error) {
		c := &dns.Client{Timeout: 5 * time.Second}
		r, _, err = c.Exchange(new(dns.Msg).SetQuestion(name, dns.TypeA), net.JoinHostPort("127.0.0.1", strconv.Itoa(vm.DefaultDNSPort)))
		return err
	})
	if err != nil {
		t.Errorf("query %s in %s: %v", name, ns.name, err)
		return
	}
	var got string
	if len(r.Answer) == 1 {
		if a, ok := r.Answer[0].(*dns.A); ok {
			got = a.A.String()
		}
	}
	wantRcode := dns.RcodeSuccess
	if want == "" {
		wantRcode = dns.RcodeNameError
	}
	if got != want || r.Rcode != wantRcode {
		t.Errorf("%s from the daemon's loopback port: %s %v, want %q", name, dns.RcodeToString[r.Rcode], r.Answer, want)
	}
}

// do runs fn on a thread of its own inside the namespace. The thread
// stays locked, so it ends with its goroutine and no other goroutine
// runs in the namespace.
func (ns *netns) do(fn func() error) error {
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		var h nsh.NsHandle
		if h, err = nsh.GetFromName(ns.name); err != nil {
			return
		}
		defer h.Close()
		if err = nsh.Set(h); err != nil {
			return
		}
		err = fn()
	}()
	<-done
	return err
}

// listen serves TCP on addr inside the namespace until the test ends,
// accepting and closing each connection, and returns where it listens.
func (ns *netns) listen(t *testing.T, addr string) string {
	t.Helper()
	var ln net.Listener
	err := ns.do(func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns.name, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().String()
}

var bangerLinkRE = regexp.MustCompile(`\b(bgtap-[a-z0-9]+|banger0)\b`)

// links lists the namespace's banger links (taps and the bridge).
func (ns *netns) links() []string {
	ns.t.Helper()
	var out []string
	for _, m := range bangerLinkRE.FindAllString(ns.ip("-o", "link", "show"), -1) {
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	slices.Sort(out)
	return out
}

func (ns *netns) taps() []string {
	var out []string
	for _, l := range ns.links() {
		if strings.HasPrefix(l, "bgtap-") {
			out = append(out, l)
		}
	}
	return out
}

// bridgedSandbox is a sandbox whose helper and daemon run in ns; the
// client stays outside (it only needs the socket) and never starts a
// daemon of its own.
func bridgedSandbox(t testing.TB) (*sandbox, *netns, string) {
	t.Helper()
	needGuests(t)
	s := newSandbox(t)
	ns := newNetns(t)
	s.env = append(s.env, "BANGER_NO_AUTOSTART=1")
	hsock := filepath.Join(s.dir, "helper.sock")
	hlog := filepath.Join(s.dir, "helper.log")
	s.startProcess(0, &bytes.Buffer{}, "ip", "netns", "exec", ns.name, bangerBin, "bangerd-root", "--socket", hsock, "--owner-uid", "0", "--log-file", hlog)
	waitSocket(t, hsock)
	return s, ns, hlog
}

// bridgedDaemon starts the daemon inside ns, on the helper's socket.
func (s *sandbox) bridgedDaemon(ns *netns) *exec.Cmd {
	s.t.Helper()
	cmd := s.startProcess(0, &bytes.Buffer{}, "ip", "netns", "exec", ns.name, bangerBin, "bangerd",
		"--helper", "socket", "--helper-socket", filepath.Join(s.dir, "helper.sock"))
	waitSocket(s.t, s.socket())
	return cmd
}

// createBridged creates a bridged VM through the API, so the test knows
// the create's op id, and returns the VM and that id.
func createBridged(t *testing.T, s *sandbox, name string) (api.VM, string) {
	t.Helper()
	var op api.Operation
	if err := s.call(api.MethodVMCreateBegin, api.VMCreate{Name: name, Image: api.TinyImage, Network: api.NetworkBridge}, &op); err != nil {
		t.Fatal(err)
	}
	if err := s.call(api.MethodOperationWait, api.OperationWait{ID: op.ID, TimeoutMS: 60000}, &op); err != nil {
		t.Fatal(err)
	}
	for !op.Done() {
		if err := s.call(api.MethodOperationWait, api.OperationWait{ID: op.ID, TimeoutMS: 60000}, &op); err != nil {
			t.Fatal(err)
		}
	}
	if op.State != api.OpSucceeded {
		t.Fatalf("create %s: %+v", name, op.Error)
	}
	var vm api.VM
	s.banger("vm", "show", "--json", name).want(t, 0).json(t, &vm)
	return vm, op.ID
}

func TestBridgedVMs(t *testing.T) {
	s, ns, hlog := bridgedSandbox(t)
	d := s.bridgedDaemon(ns)
	start := time.Now()

	// Two bridged VMs, each with its own address and tap.
	a, opA := createBridged(t, s, "a")
	t.Logf("first bridged VM (with the default image) in %s", time.Since(start))
	b, _ := createBridged(t, s, "b")
	if a.Network != "bridge" || a.Address != "10.77.0.2" || b.Address != "10.77.0.3" || a.State != "running" {
		t.Fatalf("addresses: a %+v, b %+v", a, b)
	}
	if got := ns.links(); len(got) != 3 || got[0] != "banger0" {
		t.Fatalf("links in the namespace: %v, want banger0 and two taps", got)
	}
	if r := s.banger("vm", "show", "a").want(t, 0); !strings.Contains(r.stdout, "10.77.0.2") {
		t.Errorf("vm show lacks the address:\n%s", r.stdout)
	}
	if out := ns.ip("-4", "addr", "show", "banger0"); !strings.Contains(out, "10.77.0.1/24") {
		t.Errorf("bridge address: %s", out)
	}
	if out, _ := ns.exec("cat", "/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(out) != "1" {
		t.Errorf("ip_forward in the namespace: %q", out)
	}

	// The guest has its address; VM to VM and VM to bridge work.
	if r := s.banger("vm", "exec", "a", "--", "ip", "-4", "addr", "show", "eth0").want(t, 0); !strings.Contains(r.stdout, "10.77.0.2/24") {
		t.Errorf("a's eth0:\n%s", r.stdout)
	}
	s.banger("vm", "exec", "a", "--", "ping", "-c1", "-W5", b.Address).want(t, 0)
	s.banger("vm", "exec", "b", "--", "ping", "-c1", "-W5", a.Address).want(t, 0)
	s.banger("vm", "exec", "a", "--", "ping", "-c1", "-W5", "10.77.0.1").want(t, 0)

	// Names: a bridged VM is NAME.vm, for the other guests (their name
	// server is the bridge, whose port 53 the helper redirects to the
	// daemon) and for the host (the daemon's loopback port).
	if a.DNSName != "a.vm" || b.DNSName != "b.vm" {
		t.Errorf("dns names: %q, %q", a.DNSName, b.DNSName)
	}
	if r := s.banger("vm", "show", "b").want(t, 0); !regexp.MustCompile(`dns name:\s+b\.vm`).MatchString(r.stdout) {
		t.Errorf("vm show lacks the dns name:\n%s", r.stdout)
	}
	if r := s.banger("vm", "exec", "a", "--", "cat", "/etc/resolv.conf").want(t, 0); r.stdout != "nameserver 10.77.0.1\nsearch vm\n" {
		t.Errorf("a's resolv.conf: %q", r.stdout)
	}
	if r := s.banger("vm", "exec", "a", "--", "nslookup", "b.vm").want(t, 0); !strings.Contains(r.stdout, "Address: "+b.Address) {
		t.Errorf("nslookup b.vm in a:\n%s", r.stdout)
	}
	s.banger("vm", "exec", "a", "--", "ping", "-c1", "-W5", "b.vm").want(t, 0)
	s.banger("vm", "exec", "b", "--", "ping", "-c1", "-W5", "a").want(t, 0) // search vm
	if r := s.banger("vm", "exec", "a", "--", "nslookup", "nope.vm"); strings.Contains(r.stdout, "Address: 10.77.") {
		t.Errorf("nslookup nope.vm in a:\n%s", r.stdout)
	}
	ns.wantName(t, "b.vm.", b.Address)
	ns.wantName(t, "nope.vm.", "")

	// The host (the namespace) reaches a server in a guest at its address.
	s.banger("vm", "exec", "b", "--", "sh", "-c", "mkdir -p /tmp/www && echo hello-bridge > /tmp/www/index.html && httpd -p 8080 -h /tmp/www").want(t, 0)
	var out string
	var err error
	for range 20 {
		// bash's /dev/tcp: a plain TCP connect, from the namespace.
		get := `exec 3<>/dev/tcp/` + b.Address + `/8080 && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && timeout 5 cat <&3`
		if out, err = ns.exec("bash", "-c", get); err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		r := s.banger("vm", "exec", "b", "--", "sh", "-c", "ps; netstat -ltn")
		t.Fatalf("from the host: %v: %s\nin b: %s", err, out, r.stdout)
	}
	if !strings.HasSuffix(strings.TrimSpace(out), "\nhello-bridge") {
		t.Errorf("from the host: %q", out)
	}

	// But a guest reaches nothing of the host's own but its DNS: not a
	// listener on the bridge's address; and it cannot send as another
	// address, while the guests still reach each other as themselves.
	hostAddr := ns.listen(t, "10.77.0.1:0")
	s.banger("vm", "exec", "a", "--", "sh", "-c", "nc -w 3 10.77.0.1 53 </dev/null").want(t, 0) // nc works: the DNS is open
	if r := s.banger("vm", "exec", "a", "--", "sh", "-c", "nc -w 3 "+strings.Replace(hostAddr, ":", " ", 1)+" </dev/null"); r.code != 1 {
		t.Errorf("a reached the host's listener on %s: exit %d %s", hostAddr, r.code, r.stderr)
	}
	s.banger("vm", "exec", "a", "--", "ip", "addr", "add", "10.77.0.99/24", "dev", "eth0").want(t, 0)
	if r := s.banger("vm", "exec", "a", "--", "ping", "-c1", "-W3", "-I", "10.77.0.99", b.Address); r.code == 0 {
		t.Errorf("a sent as 10.77.0.99:\n%s", r.stdout)
	}
	s.banger("vm", "exec", "a", "--", "ip", "addr", "del", "10.77.0.99/24", "dev", "eth0").want(t, 0)
	s.banger("vm", "exec", "a", "--", "ping", "-c1", "-W5", b.Address).want(t, 0)

	// One op id: the daemon's stages and one record per helper call, in
	// the create's trace.
	hrecs := withOp(readRecords(t, hlog), opA)
	drecs := withOp(readRecords(t, s.daemonLog()), opA)
	if len(drecs) == 0 || len(drecs[0].Trace) != 32 {
		t.Fatalf("the create's records have no trace: %+v", drecs)
	}
	var methods []string
	for _, r := range hrecs {
		if r.Msg != "helper rpc completed" || r.Trace != drecs[0].Trace {
			t.Errorf("helper record of the create (trace %s): %+v", drecs[0].Trace, r)
		}
		methods = append(methods, r.Method)
	}
	if !slices.Equal(methods, []string{privapi.MethodEnsureBridge, privapi.MethodEnsureNAT, privapi.MethodCreateTap}) {
		t.Errorf("helper calls of the create: %v", methods)
	}
	tr := s.banger("trace", "--log", hlog, opA).want(t, 0)
	for _, want := range []string{"[allocate address]", "[ensure bridge]", "[create tap]", "[wait for agent]", "priv.create_tap", "bangerd-root"} {
		if !strings.Contains(tr.stdout, want) {
			t.Errorf("trace lacks %q:\n%s", want, tr.stdout)
		}
	}

	// Ports are for the user network.
	s.banger("vm", "port", "add", "a", "18080:80").want(t, 2)
	s.banger("vm", "create", "--network", "bridge", "--publish", "18080:80", "--no-start").want(t, 2)
	s.banger("vm", "create", "--network", "carrier-pigeon", "--no-start").want(t, 2)

	// Stop removes the tap, start makes it again; the address stays.
	s.banger("vm", "stop", "b").want(t, 0)
	if got := ns.taps(); len(got) != 1 {
		t.Errorf("taps after stopping b: %v", got)
	}
	s.banger("vm", "start", "--json", "b").want(t, 0).json(t, &b)
	if b.Address != "10.77.0.3" || len(ns.taps()) != 2 {
		t.Errorf("after start: %+v, taps %v", b, ns.taps())
	}
	s.banger("vm", "exec", "b", "--", "ping", "-c1", "-W5", a.Address).want(t, 0)

	// A bridged guest that powers itself off gives its tap back at once;
	// it keeps its address.
	s.banger("vm", "exec", "b", "--", "poweroff")
	waitFor(t, 5*time.Second, func() bool { return len(ns.taps()) == 1 })
	s.banger("vm", "start", "--json", "b").want(t, 0).json(t, &b)
	if b.Address != "10.77.0.3" || len(ns.taps()) != 2 {
		t.Errorf("after a poweroff and a start: %+v, taps %v", b, ns.taps())
	}

	// Delete removes the tap and frees the address.
	s.banger("vm", "delete", "a").want(t, 0)
	if got := ns.links(); len(got) != 2 {
		t.Errorf("links after deleting a: %v, want the bridge and b's tap", got)
	}

	// The daemon dies after a create made its tap, before the VM is up:
	// the next daemon removes the VM, its tap and its address.
	var op api.Operation
	if err := s.call(api.MethodVMCreateBegin, api.VMCreate{Name: "c", Image: api.TinyImage, Network: api.NetworkBridge, Cold: true}, &op); err != nil {
		t.Fatal(err)
	}
	waitStage(t, s, op.ID, "wait for agent")
	if got := ns.taps(); len(got) != 2 {
		t.Fatalf("taps while c boots: %v", got)
	}
	d.Process.Signal(syscall.SIGKILL)
	waitFor(t, 10*time.Second, func() bool { return syscall.Kill(d.Process.Pid, 0) != nil })
	s.bridgedDaemon(ns)
	s.banger("vm", "show", "c").want(t, 4)
	if got := ns.taps(); len(got) != 1 {
		t.Errorf("taps after the restart: %v, want b's only", got)
	}
	if len(s.enginePIDs()) != 1 {
		t.Errorf("engines after the restart: %v, want b's only", s.enginePIDs())
	}
	var d2 api.VM
	s.banger("vm", "create", "--network", "bridge", "--no-start", "--name", "d", "--json").want(t, 0).json(t, &d2)
	if d2.Address != "10.77.0.2" || d2.State != "stopped" {
		t.Errorf("d: %+v, want the lowest free address (a's and c's)", d2)
	}
	// The new daemon answers the guests that outlived the old one, and
	// names a VM that is not running.
	if r := s.banger("vm", "exec", "b", "--", "nslookup", "d.vm").want(t, 0); !strings.Contains(r.stdout, "Address: 10.77.0.2") {
		t.Errorf("nslookup d.vm in b after the restart:\n%s", r.stdout)
	}
	ns.wantName(t, "d.vm.", "10.77.0.2")
	ns.wantName(t, "c.vm.", "")

	// vm run takes --network too; --rm takes the tap and address back.
	if r := s.banger("vm", "run", "--rm", "-q", "--network", "bridge", "--", "ip", "-4", "addr", "show", "eth0").want(t, 0); !strings.Contains(r.stdout, "10.77.0.4/24") {
		t.Errorf("vm run --network bridge:\n%s", r.stdout)
	}
	if got := ns.taps(); len(got) != 1 {
		t.Errorf("taps after vm run --rm: %v, want b's only", got)
	}

	// Reset is refused while a bridged VM runs; then it removes it all.
	if r := s.banger("network", "reset").want(t, 5); !strings.Contains(r.stderr, "b") {
		t.Errorf("reset while b runs: %s", r.stderr)
	}
	s.banger("vm", "delete", "b").want(t, 0)
	s.banger("vm", "prune").want(t, 0)
	if got := ns.links(); !slices.Equal(got, []string{"banger0"}) {
		t.Errorf("after the last VM: %v, want the bridge left", got)
	}
	var res api.NetworkResetResult
	s.banger("network", "reset", "--json").want(t, 0).json(t, &res)
	if !slices.Equal(res.Removed, []string{"banger0"}) || !res.NATTable {
		t.Errorf("reset: %+v", res)
	}
	if got := ns.links(); len(got) != 0 {
		t.Errorf("after reset: %v", got)
	}
	if out, err := ns.exec("nft", "list", "tables"); err == nil && strings.Contains(out, "banger") {
		t.Errorf("nftables after reset: %s", out)
	}
	if r := s.banger("network", "reset").want(t, 0); !strings.Contains(r.stdout, "nothing") {
		t.Errorf("second reset: %q", r.stdout)
	}
	if len(s.enginePIDs()) != 0 || len(s.vmDirs()) != 0 {
		t.Errorf("left behind: engines %v, dirs %v", s.enginePIDs(), s.vmDirs())
	}
	// A daemon that stops takes the guests' DNS redirect away: no one
	// else may take its port and answer them.
	s.stopDaemon()
	cleared := false
	for _, r := range readRecords(t, hlog) {
		cleared = cleared || r.Method == privapi.MethodClearDNS && r.Msg == "helper rpc completed"
	}
	if !cleared {
		t.Error("the daemon stopped without clearing the dns redirect")
	}
}

func TestBridgeRefusedWithoutHelper(t *testing.T) {
	s := newSandbox(t)
	s.daemon() // --helper none
	r := s.banger("vm", "create", "--network", "bridge", "--no-start").want(t, 7)
	if !strings.Contains(r.stderr, "--helper none") || !strings.Contains(r.stderr, "--network user") {
		t.Errorf("refusal without a hint: %s", r.stderr)
	}
	s.banger("network", "reset").want(t, 7)
	s.banger("vm", "create", "--network", "nope").want(t, 2)
	var vms []api.VM
	s.banger("vm", "list", "--json").want(t, 0).json(t, &vms)
	if len(vms) != 0 {
		t.Errorf("VMs after refusals: %+v", vms)
	}
}
