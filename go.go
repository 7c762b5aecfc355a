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
//	CGO_ENABLED=0 go build -tags urfave_cli_no_docs -ldflags "-X main.version=$(git describe --always --dirty)" .
//
// The urfave_cli_no_docs tag leaves out urfave/cli's man-page and
// markdown writers, which banger does not use: their markdown package's
// initialisation ran at every start of every applet (1.4 ms of the
// client's start, BENCHMARKS.md issue 4). Every build uses it
// (packaging/setup.sh, deb.sh, test.sh and the tests that build the
// binary), so that what is tested is what ships.
package main

// version and commit are stamped by the linker (-X main.version=...);
// a plain `go build` leaves "dev" and reads the commit from the build info.
var (
	version = "dev"
	commit  = ""
)
