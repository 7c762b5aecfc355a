package packaging

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"path"
	"sync"
	"text/template"

	"banger/internal/layout"
	"banger/internal/lazyre"
)

// Helper modes of a system install: how the owner's daemon reaches the
// root helper.
const (
	HelperService = "service" // bangerd-root.service on its socket
	HelperSudo    = "sudo"    // sudo -n, per call, allowed by a sudoers rule
)

// DefaultPrefix is where a system install puts the binary: PREFIX/bin.
// Its other paths are layout's System*.
const DefaultPrefix = "/usr/local"

// RestartDaemon is the command that restarts a daemon: the system
// install's (systemd runs it) or a user's own.
func RestartDaemon(system bool) string {
	if system {
		return "sudo systemctl restart " + layout.DaemonUnit
	}
	return "banger daemon stop && banger daemon start"
}

// Config is a system install, as /etc/banger/install.toml keeps it.
type Config struct {
	Owner  string `toml:"owner" json:"owner"`
	UID    int    `toml:"uid" json:"uid"`
	GID    int    `toml:"gid" json:"gid"`
	Prefix string `toml:"prefix" json:"prefix"`
	Helper string `toml:"helper" json:"helper"`
}

// Names go into units and a sudoers rule: keep them to what needs no
// quoting in either.
var (
	ownerName  = lazyre.New(`^[a-z_][a-z0-9_.-]*$`)
	prefixPath = lazyre.New(`^/[A-Za-z0-9/._+-]*$`)
)

// Validate checks the fields that end up in units and in the sudoers rule.
func (c Config) Validate() error {
	switch {
	case !ownerName().MatchString(c.Owner) || len(c.Owner) > 32:
		return fmt.Errorf("owner %q: want a plain user name (lower case letters, digits, _ . -)", c.Owner)
	case c.UID <= 0:
		return fmt.Errorf("owner %s: uid %d; the owner must not be root", c.Owner, c.UID)
	case !prefixPath().MatchString(c.Prefix) || path.Clean(c.Prefix) != c.Prefix:
		return fmt.Errorf("prefix %q: want a clean absolute path (letters, digits, / . _ + -)", c.Prefix)
	case c.Helper != HelperService && c.Helper != HelperSudo:
		return fmt.Errorf("helper %q: want %s or %s", c.Helper, HelperService, HelperSudo)
	}
	return nil
}

// Binary is the installed binary's path.
func (c Config) Binary() string { return path.Join(c.Prefix, "bin", "banger") }

// BinDir is where the binary and its applet links are.
func (c Config) BinDir() string { return path.Join(c.Prefix, "bin") }

// Units lists the unit files this install has, helper first.
func (c Config) Units() []string {
	if c.Helper == HelperService {
		return []string{layout.HelperUnit, layout.DaemonUnit}
	}
	return []string{layout.DaemonUnit}
}

//go:embed systemd/bangerd-root.service systemd/bangerd.service sudoers/banger
var templateFiles embed.FS

// templates are parsed on first use, not at start-up: every banger
// command would pay for them, and only the install commands use them.
var templates = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("").Option("missingkey=error").ParseFS(templateFiles,
		"systemd/*.service", "sudoers/banger"))
})

// unitData is what the templates see.
type unitData struct {
	Config
	HelperSocket, HelperRuntimeDir string
	DaemonSocket, DaemonRuntimeDir string
	StateDir, StateDirName         string
	HelperFlags                    string
}

func render(name string, c Config) ([]byte, error) {
	d := unitData{
		Config:           c,
		HelperSocket:     layout.SystemHelperSocket,
		HelperRuntimeDir: runtimeDirName(layout.SystemHelperSocket),
		DaemonSocket:     layout.SystemDaemonSocket,
		DaemonRuntimeDir: runtimeDirName(layout.SystemDaemonSocket),
		StateDir:         layout.SystemStateDir,
		StateDirName:     path.Base(layout.SystemStateDir),
		HelperFlags:      "--helper " + HelperSudo,
	}
	if c.Helper == HelperService {
		d.HelperFlags = "--helper socket --helper-socket " + layout.SystemHelperSocket
	}
	var b bytes.Buffer
	if err := templates().ExecuteTemplate(&b, name, d); err != nil {
		return nil, fmt.Errorf("render %s: %w", name, err)
	}
	return b.Bytes(), nil
}

// runtimeDirName is a /run socket's directory as RuntimeDirectory= names
// it (relative to /run).
func runtimeDirName(socket string) string { return path.Base(path.Dir(socket)) }

// Render returns the files of a system install that are made from
// templates, by path from the root: the units, and the sudoers rule in
// sudo mode. The owner may be a unit specifier (%i) for a template unit;
// such a config is rendered without validation.
func Render(c Config) (map[string][]byte, error) {
	if c.Owner == "" || c.Prefix == "" {
		return nil, errors.New("render: owner and prefix are required")
	}
	out := map[string][]byte{}
	for _, u := range c.Units() {
		b, err := render(u, c)
		if err != nil {
			return nil, err
		}
		out[path.Join(layout.SystemUnitDir, u)] = b
	}
	if c.Helper == HelperSudo {
		b, err := render(path.Base(layout.SystemSudoers), c)
		if err != nil {
			return nil, err
		}
		out[layout.SystemSudoers] = b
	}
	return out, nil
}
