package client

import (
	"strings"
	"testing"

	"banger/internal/depstest"
)

// TestImportGraph keeps the client in its own world: it renders what the
// daemon and the helper say and checks its own install, and never reads
// the host's network, images or engine itself (those checks run where
// the resource is: host.doctor, bangerd doctor, bangerd-root doctor).
func TestImportGraph(t *testing.T) {
	forbidden := []string{"banger/applets/", "github.com/vishvananda/", "github.com/google/nftables", "github.com/mdlayher/", "gvisor.dev/"}
	for _, d := range depstest.Deps(t, "banger/applets/client") {
		for _, f := range forbidden {
			if strings.HasPrefix(d, f) && d != "banger/applets/client" {
				t.Errorf("the client imports %s", d)
			}
		}
	}
}
