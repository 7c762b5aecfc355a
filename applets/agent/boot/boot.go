// Package boot is the contract between the host that boots a guest and the
// agent that runs as the guest's first process: the kernel command-line
// parameters the agent reads, the paths it expects, the name of its serial
// port, and the layout of the initramfs that the daemon builds for it.
// Both sides import the names from here, so each is spelled once.
//
// It must import nothing but the standard library: the daemon's engine
// and image code and the guest's PID 1 all depend on it.
package boot

import (
	"fmt"
	"net/netip"
	"strings"
)

// AgentPath is where every image has the banger binary; the kernel (or the
// initramfs's /init) runs it as PID 1.
const AgentPath = "/sbin/banger-agent"

// PortName is the name of the agent's virtio-serial port; the guest finds
// it under /sys/class/virtio-ports/*/name.
const PortName = "org.banger.agent"

// Kernel command-line parameters the agent reads.
const (
	ParamHostname = "banger.hostname" // the guest's hostname
	ParamAddress  = "banger.ip"       // eth0's address, CIDR: 10.0.2.15/24
	ParamGateway  = "banger.gw"       // the default route's gateway
	ParamDNS      = "banger.dns"      // the name server for /etc/resolv.conf
	ParamSearch   = "banger.search"   // its search domain ("vm": NAME resolves as NAME.vm)
	// ParamInit and the root parameters are the kernel's own; the
	// initramfs's /init honors them as the kernel would without one.
	ParamInit       = "init"
	ParamRDInit     = "rdinit"
	ParamRoot       = "root"
	ParamRootFSType = "rootfstype"
)

// Network is the guest's static network configuration (eth0).
type Network struct {
	Address netip.Prefix
	Gateway netip.Addr
	DNS     netip.Addr
	// Search is resolv.conf's search domain, "" for none: letters,
	// digits, '-' and '.', as a DNS name is.
	Search string
}

// UserNetwork is QEMU's user-mode network as the guest sees it.
func UserNetwork() Network {
	return Network{
		Address: netip.MustParsePrefix("10.0.2.15/24"),
		Gateway: netip.MustParseAddr("10.0.2.2"),
		DNS:     netip.MustParseAddr("10.0.2.3"),
	}
}

// Args returns the kernel parameters that carry n.
func (n Network) Args() []string {
	var args []string
	if n.Address.IsValid() {
		args = append(args, ParamAddress+"="+n.Address.String())
	}
	if n.Gateway.IsValid() {
		args = append(args, ParamGateway+"="+n.Gateway.String())
	}
	if n.DNS.IsValid() {
		args = append(args, ParamDNS+"="+n.DNS.String())
	}
	if n.Search != "" {
		args = append(args, ParamSearch+"="+n.Search)
	}
	return args
}

// Cmdline is a parsed kernel command line: the last value of each
// key=value parameter, and flags (parameters without a value) as "".
type Cmdline map[string]string

// ParseCmdline parses the text of /proc/cmdline. Parameters after "--"
// belong to init's argv and are skipped; quoting is not supported, and no
// banger parameter needs it.
func ParseCmdline(s string) Cmdline {
	c := Cmdline{}
	for _, f := range strings.Fields(s) {
		if f == "--" {
			break
		}
		k, v, _ := strings.Cut(f, "=")
		c[k] = v
	}
	return c
}

// Network returns the network the command line configures; ok is false
// when it configures none. An unparsable value is an error, so a typo
// does not boot a guest without its network silently.
func (c Cmdline) Network() (n Network, ok bool, err error) {
	addr, has := c[ParamAddress]
	if !has {
		return n, false, nil
	}
	if n.Address, err = netip.ParsePrefix(addr); err != nil {
		return n, false, fmt.Errorf("%s=%s: %w", ParamAddress, addr, err)
	}
	if v, has := c[ParamGateway]; has {
		if n.Gateway, err = netip.ParseAddr(v); err != nil {
			return n, false, fmt.Errorf("%s=%s: %w", ParamGateway, v, err)
		}
	}
	if v, has := c[ParamDNS]; has {
		if n.DNS, err = netip.ParseAddr(v); err != nil {
			return n, false, fmt.Errorf("%s=%s: %w", ParamDNS, v, err)
		}
	}
	if v, has := c[ParamSearch]; has {
		if !validDomain(v) {
			return n, false, fmt.Errorf("%s=%s: not a domain name", ParamSearch, v)
		}
		n.Search = v
	}
	return n, true, nil
}

// validDomain reports whether s is a domain name made of letters, digits,
// '-' and '.', with no empty label: it is written into resolv.conf.
func validDomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}
