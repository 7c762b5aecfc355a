// Package registry is the table of applets that share the banger binary,
// and the busybox-style choice of one by name. It imports nothing of banger
// so every applet can be listed without pulling in another's code.
package registry

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
)

// ErrNotRegistered is wrapped by Lookup for a name no applet has.
var ErrNotRegistered = errors.New("not a registered applet")

// Applet is one program of the binary. Run gets the full argument list,
// args[0] being the applet's own name, and returns the exit code.
type Applet struct {
	Name    string
	Summary string
	Run     func(args []string) int
}

// Table maps names to applets.
type Table struct {
	applets map[string]Applet
}

// Register adds a; a duplicate name is a programming error and panics.
func (t *Table) Register(a Applet) {
	if t.applets == nil {
		t.applets = map[string]Applet{}
	}
	if _, dup := t.applets[a.Name]; dup {
		panic("registry: applet " + a.Name + " registered twice")
	}
	t.applets[a.Name] = a
}

// Lookup returns the applet called name.
func (t *Table) Lookup(name string) (Applet, error) {
	a, ok := t.applets[name]
	if !ok {
		return Applet{}, fmt.Errorf("%q: %w", name, ErrNotRegistered)
	}
	return a, nil
}

// Names lists the applets' names in order.
func (t *Table) Names() []string {
	names := make([]string, 0, len(t.applets))
	for n := range t.applets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Select picks the applet for a command line: the base name of args[0]
// (the link's own name, not its target); else a first argument that is
// exactly an applet's name, which is then dropped from args; else
// fallback. The binary's own name is the fallback, so `banger bangerd`
// looks at the first argument before settling on banger. The returned
// args start with the applet's name.
func (t *Table) Select(args []string, fallback string) (Applet, []string, error) {
	if len(args) > 0 {
		if base := filepath.Base(args[0]); base != fallback {
			if a, err := t.Lookup(base); err == nil {
				return a, args, nil
			}
		}
		if len(args) > 1 {
			if a, err := t.Lookup(args[1]); err == nil {
				return a, args[1:], nil
			}
		}
	}
	a, err := t.Lookup(fallback)
	if err != nil {
		return Applet{}, nil, err
	}
	rest := []string{fallback}
	if len(args) > 1 {
		rest = append(rest, args[1:]...)
	}
	return a, rest, nil
}
