// Package lazyre compiles a regular expression on its first use. The
// binary is every applet at once, and a package-level regexp.MustCompile
// runs at every start of every one of them: the client's start, which an
// exec pays for, included.
package lazyre

import (
	"regexp"
	"sync"
)

// New returns the compiled expr, compiled on the first call.
func New(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}
