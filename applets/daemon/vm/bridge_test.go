package vm

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"banger/applets/daemon/operation"
	"banger/applets/daemon/state"
	"banger/internal/api"
	"banger/internal/layout"
	"banger/internal/privapi"
	"banger/rpc"
)

// The VM service's bridged networking against fakes of the helper and the
// engine: which helper calls each path makes, in what order, and what the
// state database holds after a failure or a crash.

// fakeHelper records priv.* calls and fails the methods in fail.
type fakeHelper struct {
	mu    sync.Mutex
	calls []string // "method name" ("priv.create_tap bgtap-x")
	fail  map[string]error
	none  bool
}

func (h *fakeHelper) Configured() bool { return !h.none }

func (h *fakeHelper) Call(ctx context.Context, method string, params, result any) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	call := method
	if t, ok := params.(privapi.Tap); ok {
		call += " " + t.Name
	}
	h.calls = append(h.calls, call)
	if err := h.fail[method]; err != nil {
		return err
	}
	return nil
}

func (h *fakeHelper) taken() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.calls
	h.calls = nil
	return out
}

// fakeEngine launches nothing (Launch fails, with launchErr when set) and
// attaches to nothing.
type fakeEngine struct {
	launchErr error
	launched  []LaunchSpec
}

func (e *fakeEngine) Launch(ctx context.Context, spec LaunchSpec) (Process, error) {
	e.launched = append(e.launched, spec)
	if e.launchErr != nil {
		return nil, e.launchErr
	}
	return nil, errors.New("fake engine launches nothing")
}

func (e *fakeEngine) Attach(ctx context.Context, dir, name string, user *UserNet) (Process, error) {
	return nil, errors.New("not running")
}

func (e *fakeEngine) Leftovers(dir string) error { return nil }
func (e *fakeEngine) AttachPaused(ctx context.Context, dir string) (Process, error) {
	return nil, errors.New("not running")
}
func (e *fakeEngine) Identity() (string, error) { return "fake", nil }

type fakeImages struct{}

func (fakeImages) Resolve(ctx context.Context, name string) (Image, error) {
	return Image{Name: name, Digest: "d", Created: time.Now(), Kernel: "/k"}, nil
}
func (fakeImages) Exists(ctx context.Context, name string) error { return nil }
func (fakeImages) ExecDefaults(context.Context, string) (api.OCIImage, error) {
	return api.OCIImage{}, nil
}

func (fakeImages) Overlay(ctx context.Context, img Image, dst string, diskMiB int) error {
	return os.WriteFile(dst, nil, 0o600)
}

func testService(t *testing.T) (*Service, *fakeHelper, *fakeEngine) {
	t.Helper()
	dir := t.TempDir()
	db, err := state.Open(context.Background(), filepath.Join(dir, layout.Database))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.PutImage(context.Background(), state.Image{Name: api.DefaultImage, Digest: "d", Created: time.Now()}); err != nil {
		t.Fatal(err)
	}
	br, err := ParseBridgeNet(DefaultBridge, DefaultBridgeCIDR)
	if err != nil {
		t.Fatal(err)
	}
	h, e := &fakeHelper{fail: map[string]error{}}, &fakeEngine{}
	return newVMService(db, operation.NewRegistry(nil), e, fakeImages{}, filepath.Join(dir, "vms"), h, br), h, e
}

// create runs a create to its end and returns the operation.
func create(t *testing.T, s *Service, p api.VMCreate) api.Operation {
	t.Helper()
	ctx := rpc.WithOpID(context.Background(), rpc.NewOpID())
	op, err := s.CreateBegin(ctx, p)
	if err != nil {
		t.Fatalf("create %+v: %v", p, err)
	}
	op, err = s.ops.Wait(ctx, op.ID, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return op
}

func TestParseBridgeNet(t *testing.T) {
	b, err := ParseBridgeNet("banger0", "10.77.0.0/24")
	if err != nil || b.gateway.String() != "10.77.0.1" || b.first.String() != "10.77.0.2" || b.last.String() != "10.77.0.254" || b.dns.IsValid() {
		t.Errorf("/24: %+v, %v", b, err)
	}
	b, err = ParseBridgeNet("banger0", "192.168.8.0/30")
	if err != nil || b.first.String() != "192.168.8.2" || b.last.String() != "192.168.8.2" {
		t.Errorf("/30: %+v, %v", b, err)
	}
	b, err = ParseBridgeNet("banger0", "172.16.0.0/16")
	if err != nil || b.last.String() != "172.16.255.254" {
		t.Errorf("/16: %+v, %v", b, err)
	}
	for _, bad := range []string{"", "10.77.0.1/24", "10.77.0.0/31", "10.0.0.0/8", "fd00::/64", "10.77.0.0", "8.8.8.0/24"} {
		if _, err := ParseBridgeNet("banger0", bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestTapNameAndMAC(t *testing.T) {
	tapRE := regexp.MustCompile(`^bgtap-[a-z0-9]{1,9}$`)
	macRE := regexp.MustCompile(`^02(:[0-9a-f]{2}){5}$`)
	seen := map[string]bool{}
	for _, id := range []string{"vm-01JT2M3QZ8Y4N7K5W6X9ABCDEF", "vm-01JT2M3QZ8Y4N7K5W6X9ABCDEG", "vm-x"} {
		tap, mac := tapName(id), macAddress(id)
		if !tapRE.MatchString(tap) || !macRE.MatchString(mac) || seen[tap] || seen[mac] {
			t.Errorf("%s: tap %q, mac %q", id, tap, mac)
		}
		seen[tap], seen[mac] = true, true
		if tapName(id) != tap || macAddress(id) != mac {
			t.Errorf("%s: not stable", id)
		}
	}
}

func TestBridgeRefusals(t *testing.T) {
	s, h, _ := testService(t)
	ctx := context.Background()
	_, err := s.CreateBegin(ctx, api.VMCreate{Name: "x", Network: "wifi"})
	wantErrCode(t, err, rpc.CodeInvalidParams)
	_, err = s.CreateBegin(ctx, api.VMCreate{Name: "x", Network: api.NetworkBridge, Publish: []api.PortForward{{HostPort: 18080, GuestPort: 80}}})
	wantErrCode(t, err, rpc.CodeInvalidParams)
	h.none = true
	_, err = s.CreateBegin(ctx, api.VMCreate{Name: "x", Network: api.NetworkBridge})
	wantErrCode(t, err, rpc.CodeUnavailable)
	_, err = s.NetworkReset(ctx, rpc.NoParams{})
	wantErrCode(t, err, rpc.CodeUnavailable)
	if len(h.taken()) != 0 {
		t.Error("a refused call reached the helper")
	}
}

func wantErrCode(t *testing.T, err error, code string) {
	t.Helper()
	if rpc.CodeOf(err) != code {
		t.Fatalf("error %v, want %s", err, code)
	}
}

// A launch that fails undoes the tap (through the helper) and the
// address; the bridge and NAT stay.
func TestBridgedCreateFailureUndoesTapAndAddress(t *testing.T) {
	s, h, e := testService(t)
	e.launchErr = errors.New("no qemu here")
	op := create(t, s, api.VMCreate{Name: "box", Network: api.NetworkBridge})
	if op.State != api.OpFailed {
		t.Fatalf("operation: %+v", op)
	}
	var names []string
	for _, st := range op.Stages {
		names = append(names, st.Name+":"+st.State)
	}
	// The disk is made by the way the VM starts (a boot, here), after the
	// network every way shares.
	want := []string{"resolve image:done", "record vm:undone", "allocate address:undone",
		"ensure bridge:done", "ensure nat:done", "create tap:undone", "make disk:undone", "launch:failed",
		"undo make disk:done", "undo create tap:done", "undo allocate address:done", "undo record vm:done"}
	if !slices.Equal(names, want) {
		t.Errorf("stages:\n%v\nwant\n%v", names, want)
	}
	calls := h.taken()
	if len(calls) != 4 || calls[0] != privapi.MethodEnsureBridge || calls[1] != privapi.MethodEnsureNAT ||
		!strings.HasPrefix(calls[2], privapi.MethodCreateTap+" bgtap-") || calls[3] != privapi.MethodDeleteTap+calls[2][len(privapi.MethodCreateTap):] {
		t.Errorf("helper calls: %v", calls)
	}
	if len(e.launched) != 1 || e.launched[0].Tap == nil || e.launched[0].Tap.Address.String() != "10.77.0.2/24" ||
		e.launched[0].Tap.Gateway.String() != "10.77.0.1" || e.launched[0].Tap.DNS.IsValid() || e.launched[0].User != nil {
		t.Errorf("launch spec: %+v", e.launched)
	}
	if _, err := s.db.GetVM(context.Background(), "box"); rpc.CodeOf(err) != rpc.CodeNotFound {
		t.Errorf("row after the undo: %v", err)
	}
}

// The helper refuses the tap: what may have been made is taken back and
// the create leaves nothing.
func TestCreateTapFailureLeavesNothing(t *testing.T) {
	s, h, e := testService(t)
	h.fail[privapi.MethodCreateTap] = rpc.Errorf(rpc.CodeConflict, "tap exists and belongs to uid 7")
	op := create(t, s, api.VMCreate{Name: "box", Network: api.NetworkBridge})
	if op.State != api.OpFailed || op.Error.Code != rpc.CodeConflict || len(e.launched) != 0 {
		t.Fatalf("operation: %+v", op)
	}
	calls := h.taken()
	if len(calls) != 4 || calls[3] != privapi.MethodDeleteTap+calls[2][len(privapi.MethodCreateTap):] {
		t.Errorf("helper calls: %v", calls)
	}
	if _, err := s.db.GetVM(context.Background(), "box"); rpc.CodeOf(err) != rpc.CodeNotFound {
		t.Errorf("row after the failure: %v", err)
	}
}

// The tap's removal fails during the undo: the VM stays, failed, with its
// tap recorded, and a later delete removes it.
func TestUndoThatCannotRemoveTheTapKeepsTheRecord(t *testing.T) {
	s, h, e := testService(t)
	e.launchErr = errors.New("no qemu here")
	h.fail[privapi.MethodDeleteTap] = rpc.Errorf(rpc.CodeUnavailable, "helper down")
	create(t, s, api.VMCreate{Name: "box", Network: api.NetworkBridge})
	ctx := context.Background()
	vm, err := s.db.GetVM(ctx, "box")
	if err != nil || vm.State != state.VMFailed || vm.Tap == "" || !strings.Contains(vm.LastError, vm.Tap) {
		t.Fatalf("after a failed undo: %+v, %v", vm, err)
	}
	_, err = s.Delete(ctx, api.VMDelete{Name: "box"})
	wantErrCode(t, err, rpc.CodeUnavailable)
	delete(h.fail, privapi.MethodDeleteTap)
	h.taken()
	if _, err := s.Delete(ctx, api.VMDelete{Name: "box"}); err != nil {
		t.Fatal(err)
	}
	if calls := h.taken(); !slices.Equal(calls, []string{privapi.MethodDeleteTap + " " + vm.Tap}) {
		t.Errorf("delete's helper calls: %v", calls)
	}
}

// interruptedAfterTap leaves what a daemon killed between "create tap"
// and "launch" of a create leaves: a row in creating, with an address
// and a recorded tap.
func interruptedAfterTap(t *testing.T, s *Service, name string) state.VM {
	t.Helper()
	ctx := context.Background()
	vm := state.VM{ID: "vm-01JT2M3QZ8Y4N7K5W6X9ABCDEF", Name: name, Image: api.DefaultImage, CPUs: 1, MemoryMiB: 256,
		State: state.VMCreating, Network: api.NetworkBridge, InstanceDir: filepath.Join(s.root, "vm-1")}
	if err := s.db.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if err := s.createTap(ctx, name); err != nil {
		t.Fatal(err)
	}
	vm, err := s.db.GetVM(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

// What a daemon killed between "create tap" and "launch" leaves: a row
// in creating, its tap recorded. The next daemon removes the tap, the
// row and so the address.
func TestReconcileRemovesTheTapOfAnInterruptedCreate(t *testing.T) {
	s, h, _ := testService(t)
	ctx := context.Background()
	held := interruptedAfterTap(t, s, "box")
	// A stopped VM whose tap removal failed earlier.
	old := state.VM{ID: "vm-01JT2M3QZ8Y4N7K5W6X9ZZZZZZ", Name: "old", Image: api.DefaultImage, CPUs: 1, MemoryMiB: 256,
		State: state.VMStopped, Network: api.NetworkBridge, InstanceDir: filepath.Join(s.root, "vm-2"), Tap: "bgtap-9zzzzzz", Address: "10.77.0.9"}
	if err := s.db.CreateVM(ctx, old); err != nil {
		t.Fatal(err)
	}
	h.taken()
	if err := s.reconcile(ctx, map[string]bool{}); err != nil {
		t.Fatal(err)
	}
	calls := h.taken()
	slices.Sort(calls)
	want := []string{privapi.MethodDeleteTap + " " + held.Tap, privapi.MethodDeleteTap + " bgtap-9zzzzzz"}
	slices.Sort(want)
	if held.Tap != tapName(held.ID) || held.Address != "10.77.0.2" || !slices.Equal(calls, want) {
		t.Errorf("held %+v; reconcile's helper calls %v, want %v", held, calls, want)
	}
	if _, err := s.db.GetVM(ctx, "box"); rpc.CodeOf(err) != rpc.CodeNotFound {
		t.Errorf("interrupted VM after reconcile: %v", err)
	}
	if v, _ := s.db.GetVM(ctx, "old"); v.Tap != "" || v.Address != "10.77.0.9" || v.State != state.VMStopped {
		t.Errorf("stopped VM after reconcile: %+v", v)
	}
	// The address is free again.
	if err := s.db.CreateVM(ctx, state.VM{ID: "vm-3", Name: "next", Image: api.DefaultImage, CPUs: 1, MemoryMiB: 256, State: state.VMStopped, Network: api.NetworkBridge}); err != nil {
		t.Fatal(err)
	}
	if a, err := s.db.AllocateAddress(ctx, "next", s.bridge.first, s.bridge.last); err != nil || a.String() != "10.77.0.2" {
		t.Errorf("next: %s, %v", a, err)
	}
	// Nothing recorded: a second start calls nothing.
	if err := s.reconcile(ctx, map[string]bool{}); err != nil || len(h.taken()) != 0 {
		t.Errorf("second reconcile: %v", err)
	}
}

// The helper is down when the next daemon starts: the interrupted VM is
// kept, failed, with its tap recorded, and the daemon starts anyway.
func TestReconcileWithTheHelperDown(t *testing.T) {
	s, h, _ := testService(t)
	ctx := context.Background()
	interruptedAfterTap(t, s, "box")
	h.fail[privapi.MethodDeleteTap] = rpc.Errorf(rpc.CodeUnavailable, "helper down")
	if err := s.reconcile(ctx, map[string]bool{}); err != nil {
		t.Fatal(err)
	}
	got, err := s.db.GetVM(ctx, "box")
	if err != nil || got.State != state.VMFailed || got.Tap == "" || got.Address == "" {
		t.Errorf("after reconcile: %+v, %v", got, err)
	}
}

func TestNetworkResetRefusedWhileBridgedVMsRun(t *testing.T) {
	s, h, _ := testService(t)
	ctx := context.Background()
	s.db.CreateVM(ctx, state.VM{ID: "vm-1", Name: "user", Image: api.DefaultImage, CPUs: 1, MemoryMiB: 256, State: state.VMRunning, Network: api.NetworkUser})
	s.db.CreateVM(ctx, state.VM{ID: "vm-2", Name: "br", Image: api.DefaultImage, CPUs: 1, MemoryMiB: 256, State: state.VMRunning, Network: api.NetworkBridge, Tap: "bgtap-2"})
	_, err := s.NetworkReset(ctx, rpc.NoParams{})
	wantErrCode(t, err, rpc.CodeConflict)
	if !strings.Contains(err.Error(), "br") || strings.Contains(err.Error(), "user") || len(h.taken()) != 0 {
		t.Errorf("refusal: %v", err)
	}
	s.db.UpdateVM(ctx, "br", func(v *state.VM) error { v.State = state.VMStopped; return nil })
	if _, err := s.NetworkReset(ctx, rpc.NoParams{}); err != nil {
		t.Fatal(err)
	}
	if calls := h.taken(); !slices.Equal(calls, []string{privapi.MethodResetNetwork}) {
		t.Errorf("helper calls: %v", calls)
	}
	if v, _ := s.db.GetVM(ctx, "br"); v.Tap != "" {
		t.Errorf("tap still recorded after a reset: %+v", v)
	}
}

// The responder answers a bridged VM's name from the state database, on
// loopback, running or not; a VM on the user network has no name there.
func TestServeDNSAnswersBridgedVMs(t *testing.T) {
	s, _, _ := testService(t)
	ctx := context.Background()
	for _, vm := range []state.VM{
		{ID: "vm-1", Name: "web", Network: api.NetworkBridge},
		{ID: "vm-2", Name: "booting", Network: api.NetworkBridge},
		{ID: "vm-3", Name: "user", Network: api.NetworkUser},
	} {
		vm.Image, vm.State, vm.Created, vm.InstanceDir = api.DefaultImage, state.VMStopped, time.Now(), t.TempDir()
		if err := s.db.CreateVM(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.db.AllocateAddress(ctx, "web", s.bridge.first, s.bridge.last); err != nil {
		t.Fatal(err)
	}
	stop, err := ServeDNS(ctx, zerolog.Nop(), 0, &s.bridge, s.db)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if s.bridge.dns != s.bridge.gateway || s.bridge.dnsPort < 1024 {
		t.Fatalf("bridge after ServeDNS: dns %s port %d", s.bridge.dns, s.bridge.dnsPort)
	}
	server := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), s.bridge.dnsPort).String()
	for _, tc := range []struct {
		name   string
		rcode  int
		answer string
	}{
		{"web.vm.", dns.RcodeSuccess, "10.77.0.2"},
		{"booting.vm.", dns.RcodeSuccess, ""}, // no address yet: no records
		{"user.vm.", dns.RcodeNameError, ""},
		{"nope.vm.", dns.RcodeNameError, ""},
	} {
		c := &dns.Client{Timeout: 5 * time.Second}
		r, _, err := c.Exchange(new(dns.Msg).SetQuestion(tc.name, dns.TypeA), server)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var got string
		if len(r.Answer) == 1 {
			got = r.Answer[0].(*dns.A).A.String()
		}
		if r.Rcode != tc.rcode || got != tc.answer {
			t.Errorf("%s: rcode %s answer %q, want %s %q", tc.name, dns.RcodeToString[r.Rcode], got, dns.RcodeToString[tc.rcode], tc.answer)
		}
	}
	web, err := s.db.GetVM(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if got := toAPI(web).DNSName; got != "web.vm" {
		t.Errorf("dns name %q", got)
	}
	web.Tap = "bgtap-1"
	if lt, err := s.LaunchTap(web); err != nil || lt.DNS.String() != "10.77.0.1" || lt.Search != "vm" {
		t.Errorf("LaunchTap: %+v, %v; want the bridge as the name server", lt, err)
	}
}
