package helper

import (
	"fmt"

	"github.com/moby/sys/capability"
)

// effectiveCaps is the helper's effective capability set.
type effectiveCaps struct {
	hex  string
	list []string
}

func (c effectiveCaps) names() []string { return c.list }

// readCapabilities loads our own effective set. priv.ping reports it so
// `banger host check` shows whether the helper can do its job (under a
// hardened unit it should hold CAP_NET_ADMIN and little else).
func readCapabilities() (effectiveCaps, error) {
	caps, err := capability.NewPid2(0)
	if err != nil {
		return effectiveCaps{}, err
	}
	if err := caps.Load(); err != nil {
		return effectiveCaps{}, err
	}
	var mask uint64
	out := effectiveCaps{list: []string{}}
	for _, c := range capability.ListKnown() {
		if caps.Get(capability.EFFECTIVE, c) {
			mask |= 1 << uint(c)
			out.list = append(out.list, "cap_"+c.String())
		}
	}
	out.hex = fmt.Sprintf("%016x", mask)
	return out, nil
}
