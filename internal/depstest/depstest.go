// Package depstest is for the tests that keep a package's import graph
// in bounds (the agent's, the client's).
package depstest

import (
	"os/exec"
	"strings"
	"testing"
)

// Deps lists the packages pkg imports, itself included, without the
// standard library; the test is skipped without the go tool.
func Deps(t testing.TB, pkg string) []string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool")
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}
