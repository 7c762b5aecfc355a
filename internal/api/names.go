package api

import (
	"regexp"
	"sync"
)

// Lazy compiles a regular expression on its first use. The binary is
// every applet at once, and a package-level regexp.MustCompile runs at
// every start of every one of them: the client's start, which an exec
// pays for, included.
func Lazy(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

// Names that cross banger's boundaries (daemon to helper, engine and
// agent), each checked by this one rule.
var (
	tapName = Lazy(`^bgtap-[a-z0-9]{1,9}$`)
	mac     = Lazy(`^[0-9a-f][26ae](:[0-9a-f]{2}){5}$`)
)

// DefaultBridge is the bridge of bridged VMs: the daemon asks the helper
// for it, and the helper's doctor reads it.
const DefaultBridge = "banger0"

// IsTapName reports whether s is a tap banger makes: "bgtap-" and 1 to 9
// of a-z, 0-9.
func IsTapName(s string) bool { return tapName().MatchString(s) }

// IsGuestMAC reports whether s is a guest hardware address banger gives:
// locally administered, unicast, lowercase.
func IsGuestMAC(s string) bool { return mac().MatchString(s) }
