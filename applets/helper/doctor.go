package helper

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"banger/internal/api"
	"banger/internal/doctor"
	"banger/internal/service"
)

// The helper's rows of `banger doctor`: the bridge, the taps and the NAT
// table it makes, read with its own names and its own view of the host. `banger
// doctor` runs `bangerd-root doctor` as its own user: links read as
// anyone's, nftables only as root.

// doctorHost is what the helper's checks look at: the host, or fakes in
// tests.
type doctorHost struct {
	uid       int
	ipForward string
	bridge    func(name string) (l hostLink, ok bool, err error)
	links     func() ([]hostLink, error)
	nat       func() (*natInfo, error) // nil, nil: no banger table
}

// natInfo is banger's nftables table, as the doctor reads it.
type natInfo struct {
	Rules []string // the comments of the postrouting chain's rules
}

func helperChecks() []doctor.Check[*doctorHost] {
	return []doctor.Check[*doctorHost]{
		{Name: "bridge " + api.DefaultBridge, Run: checkBridge},
		{Name: "taps", Run: checkTaps},
		{Name: "nat", Run: checkNAT},
	}
}

// newDoctorCommand is `bangerd-root doctor`: the helper's checks, as
// JSON for `banger doctor`; it needs no root, and changes nothing.
func newDoctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "check the bridge and the NAT table banger's bridged VMs use, as this user, and print them as JSON (banger doctor shows them)",
		Action: func(c *cli.Context) error {
			h := &doctorHost{uid: os.Getuid(), ipForward: ipForward, bridge: kernelView{}.link, links: listLinks, nat: readNATInfo}
			b, err := json.Marshal(api.DoctorResult{Rows: doctor.Run(c.Context, h, helperChecks())})
			if err != nil {
				return cli.Exit(err.Error(), service.ExitFailed)
			}
			_, err = fmt.Fprintf(c.App.Writer, "%s\n", b)
			return err
		},
	}
}

// readNATInfo reads table ip banger's masquerade rules; it needs
// CAP_NET_ADMIN, so root.
func readNATInfo() (*natInfo, error) {
	_, st, err := openNAT()
	if err != nil {
		return nil, err
	}
	if !st.present {
		return nil, nil
	}
	n := &natInfo{}
	for _, r := range st.chains[natChain] {
		n.Rules = append(n.Rules, ruleComment(r))
	}
	return n, nil
}

// checkBridge reads the bridge the helper makes for bridged VMs.
func checkBridge(ctx context.Context, h *doctorHost) api.DoctorRow {
	const name = api.DefaultBridge
	b, ok, err := h.bridge(name)
	switch {
	case err != nil:
		return doctor.Warn("bridge_unreadable", err.Error(), "check the host's network links (ip link show "+name+")")
	case !ok:
		return doctor.Skip("no " + name + ": no bridged VMs yet")
	case b.Kind != "bridge":
		return doctor.Fail("bridge_not_bridge", name+" is a "+b.Kind+", not a bridge", "sudo ip link delete "+name+" (the helper makes the bridge again)")
	case !b.Up:
		return doctor.Warn("bridge_down", name+" is down", "sudo ip link set "+name+" up")
	case len(b.Addrs) == 0:
		return doctor.Warn("bridge_no_address", name+" is up without an IPv4 address: guests have no gateway", "stop and start a bridged VM (the helper gives the bridge its address)")
	}
	addrs := make([]string, len(b.Addrs))
	for i, a := range b.Addrs {
		addrs[i] = a.String()
	}
	return doctor.OK(name + " up, " + strings.Join(addrs, ", "))
}

// checkTaps reads banger's taps: each is a running bridged VM's, on the
// bridge; one that is not (its VM gone without its daemon) warns.
func checkTaps(ctx context.Context, h *doctorHost) api.DoctorRow {
	ls, err := h.links()
	if err != nil {
		return doctor.Warn("taps_unreadable", err.Error(), "check the host's network links (ip link show)")
	}
	bridge := 0
	for _, l := range ls {
		if l.Name == api.DefaultBridge {
			bridge = l.Index
		}
	}
	var taps, loose []string
	for _, l := range ls {
		if !api.IsTapName(l.Name) {
			continue
		}
		taps = append(taps, l.Name)
		if bridge == 0 || l.Master != bridge {
			loose = append(loose, l.Name)
		}
	}
	switch {
	case len(taps) == 0:
		return doctor.Skip("no banger taps: no bridged VM runs")
	case len(loose) > 0:
		return doctor.Warn("taps_loose", "not on "+api.DefaultBridge+": "+strings.Join(loose, ", "),
			"banger vm list, then stop and start their VMs (or banger network reset, with no bridged VM running)")
	}
	return doctor.OK(fmt.Sprintf("%d on %s: %s", len(taps), api.DefaultBridge, strings.Join(taps, ", ")))
}

// checkNAT reads banger's masquerade rules, which let bridged guests
// reach out, and IPv4 forwarding.
func checkNAT(ctx context.Context, h *doctorHost) api.DoctorRow {
	if h.uid != 0 {
		return doctor.Skip("reading nftables needs root (sudo banger doctor)")
	}
	n, err := h.nat()
	if err != nil {
		return doctor.Warn("nat_unreadable", err.Error(), "check that the kernel has nftables (modprobe nf_tables)")
	}
	if n == nil {
		if _, ok, _ := h.bridge(api.DefaultBridge); ok {
			return doctor.Warn("nat_missing", "no nftables table ip "+natTable+": bridged guests cannot reach out", "stop and start a bridged VM (the helper adds the rule)")
		}
		return doctor.Skip("no nftables table ip " + natTable + ": no bridged VMs yet")
	}
	detail := fmt.Sprintf("table ip %s: %d masquerade rule(s)", natTable, len(n.Rules))
	if len(n.Rules) > 0 {
		detail += " (" + strings.Join(n.Rules, "; ") + ")"
	}
	if b, err := os.ReadFile(h.ipForward); err == nil && strings.TrimSpace(string(b)) != "1" {
		return doctor.Warn("forwarding_off", detail+"; IPv4 forwarding is off: bridged guests cannot reach out", "sudo sysctl -w net.ipv4.ip_forward=1")
	}
	return doctor.OK(detail)
}
