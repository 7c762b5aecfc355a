package api

import (
	"fmt"
	"net/netip"

	"banger/internal/lazyre"
)

// Names that cross banger's boundaries (daemon to helper, engine and
// agent), each checked by this one rule.
var (
	tapName = lazyre.New(`^bgtap-[a-z0-9]{1,9}$`)
	mac     = lazyre.New(`^[0-9a-f][26ae](:[0-9a-f]{2}){5}$`)
)

// privateNets are the RFC 1918 networks a banger network must lie in.
var privateNets = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
}

// The prefix lengths a banger network may have: at least a /30's two
// hosts (bridge and one guest), at most a /16.
const (
	MinNetworkPrefix = 16
	MaxNetworkPrefix = 30
)

// ParseNetworkCIDR parses a banger network (a bridge's): a private IPv4
// network address with a prefix from /16 to /30. The daemon checks its
// --bridge-cidr with it, the helper every cidr it is sent.
func ParseNetworkCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	switch {
	case err != nil:
		return netip.Prefix{}, fmt.Errorf("cidr %q: %v", s, err)
	case !p.Addr().Is4():
		return netip.Prefix{}, fmt.Errorf("cidr %q is not IPv4", s)
	case p.Bits() < MinNetworkPrefix || p.Bits() > MaxNetworkPrefix:
		return netip.Prefix{}, fmt.Errorf("cidr %q: the prefix must be /%d to /%d", s, MinNetworkPrefix, MaxNetworkPrefix)
	case p.Masked() != p:
		return netip.Prefix{}, fmt.Errorf("cidr %q is not a network address (did you mean %s?)", s, p.Masked())
	}
	for _, n := range privateNets {
		if n.Contains(p.Addr()) {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("cidr %q is not private (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)", s)
}

// DefaultBridge is the bridge of bridged VMs: the daemon asks the helper
// for it, and the helper's doctor reads it.
const DefaultBridge = "banger0"

// IsTapName reports whether s is a tap banger makes: "bgtap-" and 1 to 9
// of a-z, 0-9.
func IsTapName(s string) bool { return tapName().MatchString(s) }

// IsGuestMAC reports whether s is a guest hardware address banger gives:
// locally administered, unicast, lowercase.
func IsGuestMAC(s string) bool { return mac().MatchString(s) }
