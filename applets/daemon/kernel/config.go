package kernel

import (
	"bufio"
	"bytes"
	_ "embed"
	"fmt"
	"strings"
)

// microvmFragment is the config fragment `banger kernel build` merges over
// tinyconfig: what banger's guests need, built in.
//
//go:embed microvm.config
var microvmFragment []byte

// MicroVMFragment returns the text of banger's microVM config fragment.
func MicroVMFragment() []byte { return bytes.Clone(microvmFragment) }

// Option is one line of a kernel config: CONFIG_NAME and its value ("y",
// "m", "n" for "is not set", a number or a quoted string).
type Option struct {
	Name  string
	Value string
}

// ParseConfig reads a .config or a fragment: NAME=VALUE lines and
// "# NAME is not set" lines (value "n"); other comments and blank lines
// are skipped. A line that is neither is an error.
func ParseConfig(data []byte) ([]Option, error) {
	var opts []Option
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if name, ok := strings.CutPrefix(line, "# "); ok {
			if name, ok = strings.CutSuffix(name, " is not set"); ok && strings.HasPrefix(name, "CONFIG_") {
				opts = append(opts, Option{Name: name, Value: "n"})
			}
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok || !strings.HasPrefix(name, "CONFIG_") || value == "" {
			return nil, fmt.Errorf("config line %d: %q is not CONFIG_NAME=VALUE", n, line)
		}
		opts = append(opts, Option{Name: name, Value: value})
	}
	return opts, sc.Err()
}

// MissingOptions returns the options of fragment that config does not
// hold as asked, as "CONFIG_X=y (got n)" lines: kconfig silently drops an
// option whose dependencies are not met, so a build checks its result.
// An option asked as "n" holds when config has it unset or absent.
func MissingOptions(config, fragment []byte) ([]string, error) {
	want, err := ParseConfig(fragment)
	if err != nil {
		return nil, fmt.Errorf("fragment: %w", err)
	}
	have, err := ParseConfig(config)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	got := make(map[string]string, len(have))
	for _, o := range have {
		got[o.Name] = o.Value
	}
	var missing []string
	for _, o := range want {
		v, ok := got[o.Name]
		if !ok {
			v = "n"
		}
		if v != o.Value {
			missing = append(missing, fmt.Sprintf("%s=%s (got %s)", o.Name, o.Value, v))
		}
	}
	return missing, nil
}
