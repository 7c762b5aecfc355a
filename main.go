package main

import (
	"os"
	"runtime/debug"

	"banger/applets"
	"banger/internal/api"
)

func main() {
	os.Exit(applets.Main(buildInfo(), os.Args))
}

// buildInfo returns the linker-stamped version, falling back to the VCS
// revision Go records in the binary.
func buildInfo() api.Build {
	b := api.Build{Version: version, Commit: commit}
	if b.Commit == "" {
		if info, ok := debug.ReadBuildInfo(); ok {
			for _, s := range info.Settings {
				if s.Key == "vcs.revision" && len(s.Value) >= 12 {
					b.Commit = s.Value[:12]
				}
			}
		}
	}
	return b
}
