package agent

import (
	"strings"
	"testing"

	"banger/internal/depstest"
)

// TestImportGraph keeps the guest side lean: the agent and its boot
// contract must not pull in the daemon's code (state, images, engines)
// or its dependencies, and the boot contract imports only the standard
// library.
func TestImportGraph(t *testing.T) {
	deps := func(pkg string) []string { return depstest.Deps(t, pkg) }
	for _, d := range deps("banger/applets/agent/boot") {
		if d != "banger/applets/agent/boot" {
			t.Errorf("the boot contract imports %s", d)
		}
	}
	// printable comes with agentlink, whose host side filters what the
	// guest says; it imports only the standard library.
	allowed := []string{"banger/applets/agent", "banger/internal/api", "banger/internal/agentlink", "banger/internal/session", "banger/internal/printable",
		// untar and treetar are the two ends of a copy, shared with the
		// client; they import only the standard library and x/sys.
		"banger/internal/untar", "banger/internal/treetar",
		// errdefs comes with rpc (the kinds it maps to codes), privapi with
		// api (the helper's results the daemon reports): types, and
		// privapi's typed client on rpc.
		"banger/internal/errdefs", "banger/internal/privapi", "banger/internal/lazyre",
		// rate comes with agentlink's host side too: the rate a guest's
		// records are written into the daemon's log at.
		"golang.org/x/time/rate",
		"banger/logging", "banger/rpc",
		"golang.org/x/sys/", "github.com/rs/zerolog", "github.com/mattn/", "github.com/oklog/ulid/",
		"github.com/hashicorp/yamux", "github.com/vishvananda/", "github.com/creack/pty", "github.com/prometheus/procfs"}
	for _, d := range deps("banger/applets/agent") {
		ok := false
		for _, a := range allowed {
			ok = ok || strings.HasPrefix(d, a)
		}
		if !ok {
			t.Errorf("the agent imports %s", d)
		}
	}
}
