package agent

import (
	"net/netip"
	"testing"

	"banger/internal/agentlink"
	"banger/rpc"
)

func TestResumeRefusesBadIdentities(t *testing.T) {
	good := func() agentlink.ResumeParams {
		return agentlink.ResumeParams{Hostname: "box-1", MachineID: "0123456789abcdef0123456789abcdef",
			BootID: "01234567-89ab-cdef-0123-456789abcdef", Seed: make([]byte, 64), TimeUnixNS: 1,
			Network: &agentlink.ResumeNetwork{Address: netip.MustParsePrefix("10.77.0.5/24"), MAC: "02:00:00:00:00:05"}}
	}
	if err := validResume(good()); err != nil {
		t.Fatalf("good params refused: %v", err)
	}
	for name, mutate := range map[string]func(*agentlink.ResumeParams){
		"empty hostname":        func(p *agentlink.ResumeParams) { p.Hostname = "" },
		"hostname with a dot":   func(p *agentlink.ResumeParams) { p.Hostname = "a.b" },
		"hostname with a slash": func(p *agentlink.ResumeParams) { p.Hostname = "../etc" },
		"long hostname":         func(p *agentlink.ResumeParams) { p.Hostname = string(make([]byte, 64)) },
		"short machine id":      func(p *agentlink.ResumeParams) { p.MachineID = "0123" },
		"upper machine id":      func(p *agentlink.ResumeParams) { p.MachineID = "0123456789ABCDEF0123456789ABCDEF" },
		"machine id newline":    func(p *agentlink.ResumeParams) { p.MachineID = "0123456789abcdef0123456789abcde\n" },
		"boot id with spaces":   func(p *agentlink.ResumeParams) { p.BootID = "a b" },
		"short seed":            func(p *agentlink.ResumeParams) { p.Seed = make([]byte, 8) },
		"huge seed":             func(p *agentlink.ResumeParams) { p.Seed = make([]byte, 4096) },
		"no time":               func(p *agentlink.ResumeParams) { p.TimeUnixNS = 0 },
		"no address":            func(p *agentlink.ResumeParams) { p.Network.Address = netip.Prefix{} },
		"ipv6 address":          func(p *agentlink.ResumeParams) { p.Network.Address = netip.MustParsePrefix("fd00::5/64") },
		"multicast mac":         func(p *agentlink.ResumeParams) { p.Network.MAC = "01:00:00:00:00:05" },
		"mac with garbage":      func(p *agentlink.ResumeParams) { p.Network.MAC = "02:00:00:00:00:05; reboot" },
	} {
		p := good()
		mutate(&p)
		if err := validResume(p); rpc.CodeOf(err) != rpc.CodeInvalidParams {
			t.Errorf("%s: %v, want invalid_params", name, err)
		}
	}
}
