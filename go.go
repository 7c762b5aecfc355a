// Command banger gives developers disposable Linux sandboxes on microVMs:
// `banger vm run ./repo -- make test` boots a fresh VM, copies the repo in,
// runs the command and exits with its status.
//
// banger is one static binary with several applets, picked by the name it
// is started under (see package banger/applets): banger (the client),
// bangerd (the daemon), bangerd-root (the root helper).
//
// Build with:
//
//	CGO_ENABLED=0 go build -ldflags "-X main.version=$(git describe --always --dirty)" .
package main

// version and commit are stamped by the linker (-X main.version=...);
// a plain `go build` leaves "dev" and reads the commit from the build info.
var (
	version = "dev"
	commit  = ""
)
