package kernel

import (
	"strings"
	"testing"
)

func TestParseConfig(t *testing.T) {
	opts, err := ParseConfig([]byte("# comment\nCONFIG_A=y\n\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\nCONFIG_D=8\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Option{{"CONFIG_A", "y"}, {"CONFIG_B", "n"}, {"CONFIG_C", `"x y"`}, {"CONFIG_D", "8"}}
	if len(opts) != len(want) {
		t.Fatalf("got %v, want %v", opts, want)
	}
	for i := range want {
		if opts[i] != want[i] {
			t.Errorf("option %d: got %v, want %v", i, opts[i], want[i])
		}
	}
	for _, bad := range []string{"A=y", "CONFIG_A", "CONFIG_A="} {
		if _, err := ParseConfig([]byte(bad)); err == nil {
			t.Errorf("ParseConfig(%q) = nil error", bad)
		}
	}
}

func TestMissingOptions(t *testing.T) {
	frag := []byte("CONFIG_A=y\nCONFIG_B=n\nCONFIG_C=y\nCONFIG_D=n\nCONFIG_E=8\n")
	config := []byte("CONFIG_A=y\n# CONFIG_B is not set\n# CONFIG_C is not set\nCONFIG_E=4\n")
	missing, err := MissingOptions(config, frag)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(missing, "; ")
	if got != "CONFIG_C=y (got n); CONFIG_E=8 (got 4)" {
		t.Errorf("missing = %q", got)
	}
}

// TestMicroVMFragment checks the embedded fragment parses and asks for
// what the agent cannot boot without.
func TestMicroVMFragment(t *testing.T) {
	opts, err := ParseConfig(MicroVMFragment())
	if err != nil {
		t.Fatal(err)
	}
	has := map[string]string{}
	for _, o := range opts {
		if _, dup := has[o.Name]; dup {
			t.Errorf("%s appears twice", o.Name)
		}
		has[o.Name] = o.Value
	}
	for _, name := range []string{"CONFIG_PVH", "CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_BLK", "CONFIG_VIRTIO_CONSOLE",
		"CONFIG_EXT4_FS", "CONFIG_DEVTMPFS", "CONFIG_UNIX98_PTYS", "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_UNIX",
		"CONFIG_OVERLAY_FS", "CONFIG_USER_NS", "CONFIG_CGROUPS", "CONFIG_SECCOMP_FILTER"} {
		if has[name] != "y" {
			t.Errorf("fragment lacks %s=y", name)
		}
	}
	if has["CONFIG_MODULES"] != "n" {
		t.Error("fragment must build everything in (CONFIG_MODULES=n)")
	}
}
