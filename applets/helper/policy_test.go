package helper

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"banger/internal/api"
	"banger/internal/privapi"
	"banger/logging"
	"banger/rpc"
)

// fakeView is a host with fixed routes and links.
type fakeView struct {
	rs    []hostRoute
	links map[string]hostLink
}

func (v fakeView) routes() ([]hostRoute, error) { return v.rs, nil }

func (v fakeView) link(name string) (hostLink, bool, error) {
	l, ok := v.links[name]
	return l, ok, nil
}

// testHost has an uplink on a private network, a docker bridge, a
// VPN route, banger0 already set up on 10.77.0.0/24, and a dummy link
// named like a banger bridge.
var testHost = fakeView{
	rs: []hostRoute{
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), Dev: "eth0"},
		{Dst: netip.MustParsePrefix("192.168.1.0/24"), Dev: "eth0"},
		{Dst: netip.MustParsePrefix("192.168.1.20/32"), Dev: "eth0"},
		{Dst: netip.MustParsePrefix("172.17.0.0/16"), Dev: "docker0"},
		{Dst: netip.MustParsePrefix("10.8.0.0/16"), Dev: "tun0"},
		{Dst: netip.MustParsePrefix("10.99.0.0/24"), Dev: ""},
		{Dst: netip.MustParsePrefix("10.77.0.0/24"), Dev: "banger0"},
	},
	links: map[string]hostLink{
		"eth0":       {Name: "eth0", Index: 2, Kind: "device", Up: true},
		"docker0":    {Name: "docker0", Index: 3, Kind: "bridge", Up: true},
		"banger0":    {Name: "banger0", Index: 4, Kind: "bridge", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24")}},
		"banger-dum": {Name: "banger-dum", Index: 5, Kind: "dummy"},
		"bgtap-veth": {Name: "bgtap-veth", Index: 6, Kind: "veth"},
		"bgtap-tun":  {Name: "bgtap-tun", Index: 7, Kind: "tun"},
	},
}

// checkOnly is the helper's method table with each handler stopped after
// its checks, so that hostile requests go through the real decoding,
// peer policy and rules without a kernel.
func checkOnly(v hostView) rpc.Methods {
	n := &network{view: v, lock: &hostLock{}}
	return rpc.Methods{
		privapi.MethodEnsureBridge: checkThen(n, checkEnsureBridge, stop[bridgePlan]),
		privapi.MethodCreateTap:    checkThen(n, checkCreateTap, stop[tapPlan]),
		privapi.MethodDeleteTap:    checkThen(n, checkDeleteTap, stop[tapPlan]),
		privapi.MethodEnsureNAT:    checkThen(n, checkEnsureNAT, stop[natPlan]),
		privapi.MethodClearNAT:     checkThen(n, checkClearNAT, stop[natPlan]),
		privapi.MethodClearDNS:     checkThen(n, checkClearNAT, stop[natPlan]),
	}
}

// stop is the act of a checked request in checkOnly: nothing.
func stop[Plan any](Plan) (struct{}, error) { return struct{}{}, nil }

const testOwner = 1234

// hostileCases are requests the helper must refuse, with the code.
var hostileCases = []struct {
	name   string
	uid    uint32 // the peer; 0 is root
	method string
	params string
	code   string
}{
	// Peers and methods.
	{"stranger", 4321, privapi.MethodEnsureBridge, `{"name":"banger0","cidr":"10.77.0.0/24"}`, rpc.CodeUnauthorized},
	{"nobody", 65534, privapi.MethodResetNetwork, ``, rpc.CodeUnauthorized},
	{"not in the list", 0, "priv.exec", `{"argv":["sh"]}`, rpc.CodeUnknownMethod},
	{"near miss", 0, "priv.ensure_bridge ", `{}`, rpc.CodeUnknownMethod},

	// Bridge names.
	{"bridge eth0", 0, privapi.MethodEnsureBridge, `{"name":"eth0","cidr":"10.77.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge docker0", 0, privapi.MethodEnsureBridge, `{"name":"docker0","cidr":"10.66.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge injection", 0, privapi.MethodEnsureBridge, `{"name":"banger0; rm -rf /","cidr":"10.77.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge too long", 0, privapi.MethodEnsureBridge, `{"name":"banger-123456789","cidr":"10.66.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge uppercase", 0, privapi.MethodEnsureBridge, `{"name":"BANGER0","cidr":"10.66.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge uppercase suffix", 0, privapi.MethodEnsureBridge, `{"name":"banger-A","cidr":"10.66.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge path", 0, privapi.MethodEnsureBridge, `{"name":"../banger0","cidr":"10.66.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge slash", 0, privapi.MethodEnsureBridge, `{"name":"banger-a/b","cidr":"10.66.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge empty", 0, privapi.MethodEnsureBridge, `{"name":"","cidr":"10.66.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge missing", 0, privapi.MethodEnsureBridge, `{"cidr":"10.66.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge prefix only", 0, privapi.MethodEnsureBridge, `{"name":"banger-","cidr":"10.66.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge unicode", 0, privapi.MethodEnsureBridge, `{"name":"bangér0","cidr":"10.66.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge cyrillic", 0, privapi.MethodEnsureBridge, `{"name":"bаnger0","cidr":"10.66.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge newline", 0, privapi.MethodEnsureBridge, `{"name":"banger0\n","cidr":"10.66.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge nul", 0, privapi.MethodEnsureBridge, `{"name":"banger0\u0000x","cidr":"10.66.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge space", 0, privapi.MethodEnsureBridge, `{"name":" banger0","cidr":"10.66.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge is a tap name", 0, privapi.MethodEnsureBridge, `{"name":"bgtap-1","cidr":"10.66.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge name is a dummy", 0, privapi.MethodEnsureBridge, `{"name":"banger-dum","cidr":"10.66.0.0/24"}`, rpc.CodeConflict},

	// CIDRs.
	{"cidr public", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"8.8.8.0/24"}`, rpc.CodeInvalidParams},
	{"cidr public next to 172.16/12", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"172.32.0.0/24"}`, rpc.CodeInvalidParams},
	{"cidr cgnat", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"100.64.0.0/24"}`, rpc.CodeInvalidParams},
	{"cidr loopback", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"127.0.0.0/24"}`, rpc.CodeInvalidParams},
	{"cidr link-local", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"169.254.0.0/24"}`, rpc.CodeInvalidParams},
	{"cidr everything", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"0.0.0.0/0"}`, rpc.CodeInvalidParams},
	{"cidr /8", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"10.0.0.0/8"}`, rpc.CodeInvalidParams},
	{"cidr /15", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"10.66.0.0/15"}`, rpc.CodeInvalidParams},
	{"cidr /31", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"10.66.0.0/31"}`, rpc.CodeInvalidParams},
	{"cidr /32", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"10.66.0.1/32"}`, rpc.CodeInvalidParams},
	{"cidr not the network", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"10.66.0.1/24"}`, rpc.CodeInvalidParams},
	{"cidr no prefix", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"10.66.0.0"}`, rpc.CodeInvalidParams},
	{"cidr empty", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":""}`, rpc.CodeInvalidParams},
	{"cidr garbage", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"10.66.0.0/24; nft flush ruleset"}`, rpc.CodeInvalidParams},
	{"cidr ipv6", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"fd00::/64"}`, rpc.CodeInvalidParams},
	{"cidr v4-mapped", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"::ffff:10.66.0.0/120"}`, rpc.CodeInvalidParams},
	{"cidr leading zeros", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"010.066.000.000/24"}`, rpc.CodeInvalidParams},
	{"cidr the uplink's", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"192.168.1.0/24"}`, rpc.CodeInvalidParams},
	{"cidr inside the uplink's", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"192.168.1.16/28"}`, rpc.CodeInvalidParams},
	{"cidr inside docker's", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"172.17.128.0/17"}`, rpc.CodeInvalidParams},
	{"cidr holding docker's", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"172.17.0.0/16"}`, rpc.CodeInvalidParams},
	{"cidr inside a vpn route", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"10.8.3.0/24"}`, rpc.CodeInvalidParams},
	{"cidr a blackhole's", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"10.99.0.0/24"}`, rpc.CodeInvalidParams},
	{"cidr another banger bridge's", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"10.77.0.0/24"}`, rpc.CodeInvalidParams},
	{"bridge moved to another cidr", 0, privapi.MethodEnsureBridge, `{"name":"banger0","cidr":"10.78.0.0/24"}`, rpc.CodeConflict},

	// Types.
	{"name a number", 0, privapi.MethodEnsureBridge, `{"name":5,"cidr":"10.66.0.0/24"}`, rpc.CodeInvalidParams},
	{"cidr an object", 0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":{"ip":"10.66.0.0"}}`, rpc.CodeInvalidParams},
	{"params an array", 0, privapi.MethodCreateTap, `["bgtap-1","banger0"]`, rpc.CodeInvalidParams},
	{"params a string", 0, privapi.MethodClearNAT, `"banger0"`, rpc.CodeInvalidParams},
	{"no params", 0, privapi.MethodEnsureNAT, ``, rpc.CodeInvalidParams},

	// Taps.
	{"tap eth0", 0, privapi.MethodCreateTap, `{"name":"eth0","bridge":"banger0"}`, rpc.CodeInvalidParams},
	{"tap too long", 0, privapi.MethodCreateTap, `{"name":"bgtap-1234567890","bridge":"banger0"}`, rpc.CodeInvalidParams},
	{"tap uppercase", 0, privapi.MethodCreateTap, `{"name":"bgtap-A","bridge":"banger0"}`, rpc.CodeInvalidParams},
	{"tap dash", 0, privapi.MethodCreateTap, `{"name":"bgtap-a-b","bridge":"banger0"}`, rpc.CodeInvalidParams},
	{"tap path", 0, privapi.MethodCreateTap, `{"name":"../bgtap-1","bridge":"banger0"}`, rpc.CodeInvalidParams},
	{"tap empty", 0, privapi.MethodCreateTap, `{"name":"","bridge":"banger0"}`, rpc.CodeInvalidParams},
	{"tap unicode", 0, privapi.MethodCreateTap, `{"name":"bgtap-ü","bridge":"banger0"}`, rpc.CodeInvalidParams},
	{"tap injection", 0, privapi.MethodCreateTap, `{"name":"bgtap-1 master eth0","bridge":"banger0"}`, rpc.CodeInvalidParams},
	{"tap on a non-banger bridge", 0, privapi.MethodCreateTap, `{"name":"bgtap-1","bridge":"docker0"}`, rpc.CodeInvalidParams},
	{"tap on the uplink", 0, privapi.MethodCreateTap, `{"name":"bgtap-1","bridge":"eth0"}`, rpc.CodeInvalidParams},
	{"tap without a bridge", 0, privapi.MethodCreateTap, `{"name":"bgtap-1"}`, rpc.CodeInvalidParams},
	{"tap on a missing bridge", 0, privapi.MethodCreateTap, `{"name":"bgtap-1","bridge":"banger-gone"}`, rpc.CodeNotFound},
	{"tap on a banger-named dummy", 0, privapi.MethodCreateTap, `{"name":"bgtap-1","bridge":"banger-dum"}`, rpc.CodeInvalidParams},
	{"tap name taken by a veth", 0, privapi.MethodCreateTap, `{"name":"bgtap-veth","bridge":"banger0","mac":"02:aa:bb:cc:dd:ee","address":"10.77.0.5"}`, rpc.CodeConflict},
	{"tap without a mac", 0, privapi.MethodCreateTap, `{"name":"bgtap-1","bridge":"banger0","address":"10.77.0.5"}`, rpc.CodeInvalidParams},
	{"tap with a multicast mac", 0, privapi.MethodCreateTap, `{"name":"bgtap-1","bridge":"banger0","mac":"03:aa:bb:cc:dd:ee","address":"10.77.0.5"}`, rpc.CodeInvalidParams},
	{"tap with a vendor's mac", 0, privapi.MethodCreateTap, `{"name":"bgtap-1","bridge":"banger0","mac":"00:16:3e:cc:dd:ee","address":"10.77.0.5"}`, rpc.CodeInvalidParams},
	{"tap with the bridge's mac", 0, privapi.MethodCreateTap, `{"name":"bgtap-1","bridge":"banger0","mac":"02:62:67:01:02:03","address":"10.77.0.5"}`, rpc.CodeInvalidParams},
	{"tap with an eui-64", 0, privapi.MethodCreateTap, `{"name":"bgtap-1","bridge":"banger0","mac":"02:aa:bb:cc:dd:ee:ff:00","address":"10.77.0.5"}`, rpc.CodeInvalidParams},
	{"tap without an address", 0, privapi.MethodCreateTap, `{"name":"bgtap-1","bridge":"banger0","mac":"02:aa:bb:cc:dd:ee"}`, rpc.CodeInvalidParams},
	{"tap as the gateway", 0, privapi.MethodCreateTap, `{"name":"bgtap-1","bridge":"banger0","mac":"02:aa:bb:cc:dd:ee","address":"10.77.0.1"}`, rpc.CodeInvalidParams},
	{"tap as the network", 0, privapi.MethodCreateTap, `{"name":"bgtap-1","bridge":"banger0","mac":"02:aa:bb:cc:dd:ee","address":"10.77.0.0"}`, rpc.CodeInvalidParams},
	{"tap as the broadcast", 0, privapi.MethodCreateTap, `{"name":"bgtap-1","bridge":"banger0","mac":"02:aa:bb:cc:dd:ee","address":"10.77.0.255"}`, rpc.CodeInvalidParams},
	{"tap off the bridge's network", 0, privapi.MethodCreateTap, `{"name":"bgtap-1","bridge":"banger0","mac":"02:aa:bb:cc:dd:ee","address":"10.78.0.5"}`, rpc.CodeInvalidParams},
	{"tap with an ipv6 address", 0, privapi.MethodCreateTap, `{"name":"bgtap-1","bridge":"banger0","mac":"02:aa:bb:cc:dd:ee","address":"fe80::1"}`, rpc.CodeInvalidParams},
	{"tap with an address range", 0, privapi.MethodCreateTap, `{"name":"bgtap-1","bridge":"banger0","mac":"02:aa:bb:cc:dd:ee","address":"10.77.0.0/24"}`, rpc.CodeInvalidParams},
	{"delete eth0", 0, privapi.MethodDeleteTap, `{"name":"eth0"}`, rpc.CodeInvalidParams},
	{"delete a bridge", 0, privapi.MethodDeleteTap, `{"name":"banger0"}`, rpc.CodeInvalidParams},
	{"delete a veth named like a tap", 0, privapi.MethodDeleteTap, `{"name":"bgtap-veth"}`, rpc.CodeConflict},
	{"tap name taken by a tun", 0, privapi.MethodCreateTap, `{"name":"bgtap-tun","bridge":"banger0","mac":"02:aa:bb:cc:dd:ee","address":"10.77.0.5"}`, rpc.CodeConflict},
	{"delete a tun named like a tap", 0, privapi.MethodDeleteTap, `{"name":"bgtap-tun"}`, rpc.CodeConflict},
	{"delete empty", 0, privapi.MethodDeleteTap, `{}`, rpc.CodeInvalidParams},

	// NAT.
	{"nat on eth0", 0, privapi.MethodEnsureNAT, `{"bridge":"eth0","cidr":"10.77.0.0/24"}`, rpc.CodeInvalidParams},
	{"nat for everything", 0, privapi.MethodEnsureNAT, `{"bridge":"banger0","cidr":"0.0.0.0/0"}`, rpc.CodeInvalidParams},
	{"nat for a public net", 0, privapi.MethodEnsureNAT, `{"bridge":"banger0","cidr":"8.8.8.0/24"}`, rpc.CodeInvalidParams},
	{"nat for another net", 0, privapi.MethodEnsureNAT, `{"bridge":"banger0","cidr":"192.168.1.0/24"}`, rpc.CodeInvalidParams},
	{"nat for a wider net", 0, privapi.MethodEnsureNAT, `{"bridge":"banger0","cidr":"10.77.0.0/16"}`, rpc.CodeInvalidParams},
	{"nat on a missing bridge", 0, privapi.MethodEnsureNAT, `{"bridge":"banger-gone","cidr":"10.66.0.0/24"}`, rpc.CodeNotFound},
	{"nat ipv6", 0, privapi.MethodEnsureNAT, `{"bridge":"banger0","cidr":"fd00::/64"}`, rpc.CodeInvalidParams},
	{"clear nat on eth0", 0, privapi.MethodClearNAT, `{"bridge":"eth0","cidr":"10.77.0.0/24"}`, rpc.CodeInvalidParams},
	{"clear dns on eth0", 0, privapi.MethodClearDNS, `{"bridge":"eth0","cidr":"10.77.0.0/24"}`, rpc.CodeInvalidParams},
	{"clear dns for everything", 0, privapi.MethodClearDNS, `{"bridge":"banger0","cidr":"0.0.0.0/0"}`, rpc.CodeInvalidParams},
	{"clear dns injection", 0, privapi.MethodClearDNS, `{"bridge":"banger0; flush ruleset","cidr":"10.77.0.0/24"}`, rpc.CodeInvalidParams},
	{"clear dns, a stranger", 4321, privapi.MethodClearDNS, `{"bridge":"banger0","cidr":"10.77.0.0/24"}`, rpc.CodeUnauthorized},
	{"clear nat for everything", 0, privapi.MethodClearNAT, `{"bridge":"banger0","cidr":"0.0.0.0/0"}`, rpc.CodeInvalidParams},
	{"clear nat injection", 0, privapi.MethodClearNAT, `{"bridge":"banger0","cidr":"10.77.0.0/24\" accept"}`, rpc.CodeInvalidParams},
	{"dns port 53", 0, privapi.MethodEnsureNAT, `{"bridge":"banger0","cidr":"10.77.0.0/24","dns_port":53}`, rpc.CodeInvalidParams},
	{"dns port 1023", 0, privapi.MethodEnsureNAT, `{"bridge":"banger0","cidr":"10.77.0.0/24","dns_port":1023}`, rpc.CodeInvalidParams},
	{"dns port 22", 0, privapi.MethodEnsureNAT, `{"bridge":"banger0","cidr":"10.77.0.0/24","dns_port":22}`, rpc.CodeInvalidParams},
	{"dns port negative", 0, privapi.MethodEnsureNAT, `{"bridge":"banger0","cidr":"10.77.0.0/24","dns_port":-1}`, rpc.CodeInvalidParams},
	{"dns port 65536", 0, privapi.MethodEnsureNAT, `{"bridge":"banger0","cidr":"10.77.0.0/24","dns_port":65536}`, rpc.CodeInvalidParams},
	{"dns port wraps to 53", 0, privapi.MethodEnsureNAT, `{"bridge":"banger0","cidr":"10.77.0.0/24","dns_port":65589}`, rpc.CodeInvalidParams},
	{"dns port huge", 0, privapi.MethodEnsureNAT, `{"bridge":"banger0","cidr":"10.77.0.0/24","dns_port":1e30}`, rpc.CodeInvalidParams},
	{"dns port fraction", 0, privapi.MethodEnsureNAT, `{"bridge":"banger0","cidr":"10.77.0.0/24","dns_port":5353.5}`, rpc.CodeInvalidParams},
	{"dns port a string", 0, privapi.MethodEnsureNAT, `{"bridge":"banger0","cidr":"10.77.0.0/24","dns_port":"5353"}`, rpc.CodeInvalidParams},
	{"dns port on eth0", 0, privapi.MethodEnsureNAT, `{"bridge":"eth0","cidr":"10.77.0.0/24","dns_port":5353}`, rpc.CodeInvalidParams},
	{"dns port on a missing bridge", 0, privapi.MethodEnsureNAT, `{"bridge":"banger-gone","cidr":"10.66.0.0/24","dns_port":5353}`, rpc.CodeNotFound},
	{"clear dns port 53", 0, privapi.MethodClearNAT, `{"bridge":"banger0","cidr":"10.77.0.0/24","dns_port":53}`, rpc.CodeInvalidParams},
}

// callStdio sends one request to srv as peer uid and returns the response
// and the call's log record.
func callStdio(t *testing.T, srv testSrv, uid uint32, method, params string) (rpc.Response, map[string]any) {
	t.Helper()
	req := `{"version":1,"method":` + quote(method)
	if params != "" {
		req += `,"params":` + params
	}
	req += "}\n"
	srv.log.Reset()
	var out bytes.Buffer
	srv.ServeStdio(context.Background(), strings.NewReader(req), &out, rpc.Peer{UID: uid, GID: uid, PID: 1})
	var resp rpc.Response
	if err := json.Unmarshal(out.Bytes(), &resp); err != nil {
		t.Fatalf("%s: response is not JSON: %v\n%s", method, err, out.String())
	}
	var rec map[string]any
	if err := json.Unmarshal(srv.log.Bytes(), &rec); err != nil {
		t.Fatalf("%s: log record is not one JSON line: %v\n%s", method, err, srv.log.String())
	}
	return resp, rec
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// testSrv is the helper's server as run with --owner-uid testOwner, with
// its log in a buffer.
type testSrv struct {
	*rpc.Server
	log *bytes.Buffer
}

func testServer(t *testing.T) testSrv {
	var log bytes.Buffer
	lock := filepath.Join(t.TempDir(), "helper.lock")
	return testSrv{newServer(api.Build{Version: "test"}, testOwner, lock, logging.New(&log, api.AppletHelper, zerolog.InfoLevel)), &log}
}

func TestHostileRequestsAreRefused(t *testing.T) {
	srv := testServer(t)
	srv.Methods = checkOnly(testHost)
	for _, tc := range hostileCases {
		t.Run(tc.name, func(t *testing.T) {
			resp, rec := callStdio(t, srv, tc.uid, tc.method, tc.params)
			if resp.OK || resp.Error == nil {
				t.Fatalf("%s %s was accepted", tc.method, tc.params)
			}
			if resp.Error.Code != tc.code {
				t.Fatalf("%s %s: code %s (%s), want %s", tc.method, tc.params, resp.Error.Code, resp.Error.Message, tc.code)
			}
			t.Log(resp.Error.Message)
			if rec["msg"] != "helper rpc failed" || rec["code"] != tc.code {
				t.Errorf("log record %v, want a helper rpc failed record with code %s", rec, tc.code)
			}
		})
	}
}

// TestSaneRequestsPassTheRules keeps the hostile table honest: the same
// shapes with good values pass, for root and the owner alike.
func TestSaneRequestsPassTheRules(t *testing.T) {
	srv := testServer(t)
	srv.Methods = checkOnly(testHost)
	for _, tc := range []struct {
		uid            uint32
		method, params string
	}{
		{0, privapi.MethodEnsureBridge, `{"name":"banger0","cidr":"10.77.0.0/24"}`},
		{testOwner, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"10.66.0.0/24"}`},
		{0, privapi.MethodEnsureBridge, `{"name":"banger-a-b1234","cidr":"172.20.0.0/16"}`},
		{0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"192.168.200.252/30"}`},
		{0, privapi.MethodEnsureBridge, `{"name":"banger-a","cidr":"10.66.0.0/24","unknown":{"x":[1]}}`},
		{testOwner, privapi.MethodCreateTap, `{"name":"bgtap-123456789","bridge":"banger0","mac":"02:aa:bb:cc:dd:ee","address":"10.77.0.5"}`},
		{0, privapi.MethodDeleteTap, `{"name":"bgtap-gone"}`},
		{0, privapi.MethodEnsureNAT, `{"bridge":"banger0","cidr":"10.77.0.0/24"}`},
		{0, privapi.MethodEnsureNAT, `{"bridge":"banger0","cidr":"10.77.0.0/24","dns_port":1024}`},
		{testOwner, privapi.MethodEnsureNAT, `{"bridge":"banger0","cidr":"10.77.0.0/24","dns_port":65535}`},
		{0, privapi.MethodClearNAT, `{"bridge":"banger-gone","cidr":"10.66.0.0/24"}`},
	} {
		resp, rec := callStdio(t, srv, tc.uid, tc.method, tc.params)
		if !resp.OK {
			t.Errorf("%s %s: %v", tc.method, tc.params, resp.Error)
		}
		if rec["msg"] != "helper rpc completed" {
			t.Errorf("%s: log record %v", tc.method, rec)
		}
	}
}

// TestEveryNetworkMethodIsChecked fails when a network method is added to
// the helper without its rules in the hostile table's method list.
func TestEveryNetworkMethodIsChecked(t *testing.T) {
	checked := checkOnly(testHost)
	for m := range methods(api.Build{}, newNetwork(0, "")) {
		_, ok := checked[m]
		if !ok && m != privapi.MethodPing && m != privapi.MethodResetNetwork {
			t.Errorf("method %s has no entry in checkOnly", m)
		}
	}
}

func TestBridgeAddressIsTheFirstHost(t *testing.T) {
	for cidr, want := range map[string]string{
		"10.77.0.0/24":       "10.77.0.1/24",
		"172.16.0.0/16":      "172.16.0.1/16",
		"192.168.200.252/30": "192.168.200.253/30",
	} {
		p, err := checkCIDR(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if got := bridgeAddress(p).String(); got != want {
			t.Errorf("bridgeAddress(%s) = %s, want %s", cidr, got, want)
		}
	}
}

// TestEveryMethodRefusesStrangers: the peer rule stands before every
// method of the closed list, priv.ping included. The handlers are stubs
// that fail the test, so a broken rule changes nothing on this host.
func TestEveryMethodRefusesStrangers(t *testing.T) {
	srv := testServer(t)
	stubs := rpc.Methods{}
	for m := range methods(api.Build{}, newNetwork(0, "")) {
		stubs[m] = rpc.Handle(func(context.Context, json.RawMessage) (struct{}, error) {
			t.Errorf("%s ran for a stranger", m)
			return struct{}{}, nil
		})
	}
	srv.Methods = stubs
	for m := range stubs {
		for _, uid := range []uint32{4321, 65534, testOwner + 1} {
			resp, rec := callStdio(t, srv, uid, m, `{}`)
			if resp.OK || resp.Error.Code != rpc.CodeUnauthorized || rec["code"] != rpc.CodeUnauthorized || rec["msg"] != "helper rpc failed" {
				t.Errorf("%s as uid %d: %+v, record %v", m, uid, resp.Error, rec)
			}
		}
	}
}

// TestEveryMethodIsInTheHostileTable: a method with params has hostile
// cases of its own (priv.ping and priv.reset_network take none, and
// strangers are refused above).
func TestEveryMethodIsInTheHostileTable(t *testing.T) {
	seen := map[string]bool{}
	for _, tc := range hostileCases {
		seen[tc.method] = true
	}
	for m := range methods(api.Build{}, newNetwork(0, "")) {
		if !seen[m] && m != privapi.MethodPing && m != privapi.MethodResetNetwork {
			t.Errorf("method %s has no hostile cases", m)
		}
	}
}
