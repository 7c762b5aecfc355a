package kernel

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// GuestModules returns the modules a banger guest needs from a modular
// kernel: required ones the guest cannot boot or talk without (the virtio
// transport of microvm, the root disk and its file system, the agent's
// serial port), and optional ones it is better with: the network, an
// entropy source, and the ACPI power button (with evdev, so the agent can
// read it) that turns QMP's system_powerdown into a clean power-off.
func GuestModules() (required, optional []string) {
	return []string{"virtio_mmio", "virtio_blk", "ext4", "virtio_console"},
		[]string{"virtio_net", "virtio_rng", "button", "evdev"}
}

// ErrModuleNotFound is wrapped when a required module is neither a
// module of the kernel nor built into it.
var ErrModuleNotFound = errors.New("kernel module not found")

// Module is a module file to load, as ResolveModules orders them.
type Module struct {
	Name string
	// Path is the file, relative to the modules directory
	// ("kernel/fs/ext4/ext4.ko"; it may end in .xz, .gz or .zst).
	Path     string
	Optional bool
}

// ModuleIndex is what depmod wrote in a /lib/modules/RELEASE directory:
// module files and their dependencies, soft dependencies, aliases, and
// the modules built into the kernel.
type ModuleIndex struct {
	Dir     string
	deps    map[string][]string // name -> paths of its dependencies
	paths   map[string]string   // name -> path
	builtin map[string]bool
	softPre map[string][]string // name -> names or aliases to load first
	aliases map[string][]string // alias pattern -> names
}

// moduleName is the kernel's name for a module file: the base name without
// its extensions, with dashes as underscores.
func moduleName(p string) string {
	base := path.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// ReadModuleIndex reads modules.dep, modules.builtin, modules.softdep and
// modules.alias of dir. Only modules.dep must exist.
func ReadModuleIndex(dir string) (*ModuleIndex, error) {
	ix := &ModuleIndex{Dir: dir, deps: map[string][]string{}, paths: map[string]string{},
		builtin: map[string]bool{}, softPre: map[string][]string{}, aliases: map[string][]string{}}
	err := eachLine(filepath.Join(dir, "modules.dep"), func(line string) error {
		mod, deps, ok := strings.Cut(line, ":")
		if !ok {
			return fmt.Errorf("modules.dep line %q has no colon", line)
		}
		name := moduleName(mod)
		ix.paths[name] = mod
		ix.deps[name] = strings.Fields(deps)
		return nil
	})
	if err != nil {
		return nil, err
	}
	optional := func(file string, fn func(string) error) error {
		err := eachLine(filepath.Join(dir, file), fn)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	if err := optional("modules.builtin", func(line string) error {
		ix.builtin[moduleName(line)] = true
		return nil
	}); err != nil {
		return nil, err
	}
	if err := optional("modules.softdep", func(line string) error {
		// softdep NAME pre: A B post: C
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "softdep" {
			return nil
		}
		name, pre := moduleName(f[1]), false
		for _, w := range f[2:] {
			switch w {
			case "pre:":
				pre = true
			case "post:":
				pre = false
			default:
				if pre {
					ix.softPre[name] = append(ix.softPre[name], w)
				}
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := optional("modules.alias", func(line string) error {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "alias" {
			ix.aliases[f[1]] = append(ix.aliases[f[1]], moduleName(f[2]))
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return ix, nil
}

func eachLine(file string, fn func(string) error) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := fn(line); err != nil {
			return fmt.Errorf("%s: %w", filepath.Base(file), err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	return nil
}

// Builtin reports whether the module name is built into the kernel.
func (ix *ModuleIndex) Builtin(name string) bool {
	return ix.builtin[strings.ReplaceAll(name, "-", "_")]
}

// Resolve orders the modules to load for the required and optional names:
// each module after its dependencies (modules.dep) and its soft "pre"
// dependencies (modules.softdep, through modules.alias: ext4 wants a crc32c
// driver the kernel would otherwise ask a modprobe for, and an initramfs
// has none). Built-in modules are skipped. A missing required module is an
// error wrapping ErrModuleNotFound; a missing optional one is left out.
// An empty result means the kernel needs no initramfs for these modules.
func (ix *ModuleIndex) Resolve(required, optional []string) ([]Module, error) {
	r := resolver{ix: ix, state: map[string]int{}, optional: map[string]bool{}}
	for _, n := range required {
		if err := r.visit(strings.ReplaceAll(n, "-", "_"), false); err != nil {
			return nil, err
		}
	}
	for _, n := range optional {
		if err := r.visit(strings.ReplaceAll(n, "-", "_"), true); err != nil && !errors.Is(err, ErrModuleNotFound) {
			return nil, err
		}
	}
	for i := range r.out {
		r.out[i].Optional = r.optional[r.out[i].Name]
	}
	return r.out, nil
}

type resolver struct {
	ix       *ModuleIndex
	state    map[string]int // 1 visiting, 2 done
	optional map[string]bool
	out      []Module
}

func (r *resolver) visit(name string, optional bool) error {
	if r.ix.builtin[name] {
		return nil
	}
	p, ok := r.ix.paths[name]
	if !ok {
		return fmt.Errorf("%w: %s (not in %s/modules.dep nor built in)", ErrModuleNotFound, name, r.ix.Dir)
	}
	switch r.state[name] {
	case 2:
		// A module wanted for real stays required even if an optional
		// one asked for it first.
		if !optional {
			r.optional[name] = false
		}
		return nil
	case 1:
		return fmt.Errorf("modules.dep: dependency cycle through %s", name)
	}
	r.state[name] = 1
	// Soft dependencies are best effort: several drivers may provide an
	// alias (crc32c_intel needs SSE 4.2, crc32c_generic does not), and
	// any one of them that loads is enough.
	for _, pre := range r.ix.softPre[name] {
		for _, m := range r.ix.lookupAlias(pre) {
			if err := r.visit(m, true); err != nil && !errors.Is(err, ErrModuleNotFound) {
				return err
			}
		}
	}
	for _, d := range r.ix.deps[name] {
		if err := r.visit(moduleName(d), optional); err != nil {
			return fmt.Errorf("%s needs %w", name, err)
		}
	}
	r.state[name] = 2
	r.optional[name] = optional
	r.out = append(r.out, Module{Name: name, Path: p})
	return nil
}

// lookupAlias returns the module names for a name or alias, sorted so that
// the initramfs is the same on every build.
func (ix *ModuleIndex) lookupAlias(s string) []string {
	n := strings.ReplaceAll(s, "-", "_")
	if _, ok := ix.paths[n]; ok || ix.builtin[n] {
		return []string{n}
	}
	var out []string
	for pattern, names := range ix.aliases {
		if ok, _ := path.Match(pattern, s); ok {
			out = append(out, names...)
		}
	}
	sort.Strings(out)
	return out
}
