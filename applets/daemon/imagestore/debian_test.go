package imagestore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"banger/internal/errdefs"
)

// A recipe's fields go on mmdebstrap's command line: what is not a suite,
// a package or a mirror URL is refused before anything runs.
func TestCheckDebianRefusesWhatIsNotARecipe(t *testing.T) {
	for _, spec := range []DebianSpec{
		{Suite: "--mode=root"},
		{Suite: "bookworm main"},
		{Packages: []string{"--hook-dir=/tmp"}},
		{Packages: []string{"make,gcc"}},
		{Packages: []string{"make;reboot"}},
		{Packages: []string{""}},
		{Mirror: "--setup-hook=touch /x"},
		{Mirror: "ftp://example.com/debian"},
	} {
		if err := checkDebian(&spec); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%+v: %v, want invalid", spec, err)
		}
	}
	spec := DebianSpec{Packages: []string{"python3", "libc6-dev:amd64", "git=1:2.39.5-0+deb12u1", "curl/bookworm-backports"}}
	if err := checkDebian(&spec); err != nil || spec.Suite != DefaultSuite {
		t.Errorf("a good recipe: %v (suite %q)", err, spec.Suite)
	}
}

func TestMmdebstrapArgs(t *testing.T) {
	args := mmdebstrapArgs(DebianSpec{Suite: "bookworm", Packages: []string{"make", "git"}})
	want := []string{"--variant=apt", "--format=tar", "--mode=auto", "--include=make,git", "bookworm", "-",
		"deb http://deb.debian.org/debian bookworm main",
		"deb http://deb.debian.org/debian bookworm-updates main",
		"deb http://deb.debian.org/debian-security bookworm-security main"}
	if !slices.Equal(args, want) {
		t.Errorf("args %q,\nwant %q", args, want)
	}
	args = mmdebstrapArgs(DebianSpec{Suite: "trixie", Mirror: "http://127.0.0.1:3142/debian"})
	if got := args[len(args)-3:]; !slices.Equal(got, []string{"trixie", "-", "http://127.0.0.1:3142/debian"}) {
		t.Errorf("a given mirror: %q", args)
	}
}

// The build's progress is mmdebstrap's steps, then the bytes downloaded
// while apt downloads (counted in its tree), never a step's count after
// the next step; a failure quotes the last lines and names the way out.
func TestMmdebstrapLog(t *testing.T) {
	tree := t.TempDir()
	archives := filepath.Join(tree, "var/cache/apt/archives")
	os.MkdirAll(archives, 0o755)
	os.WriteFile(filepath.Join(archives, "make.deb"), make([]byte, 3<<20), 0o644)

	details := make(chan string, 100)
	l := newMmdebstrapLog(func(d string) { details <- d })
	r, w, _ := os.Pipe()
	done := make(chan struct{})
	go func() { l.read(context.Background(), r); close(done) }()
	for _, line := range []string{"I: automatically chosen mode: root", "I: using " + tree + " as tempdir",
		"I: running apt-get update...", "I: downloading packages with apt..."} {
		w.WriteString(line + "\n")
	}
	want := []string{"running apt-get update", "downloading packages with apt", "downloading packages with apt: 3.0 MiB"}
	for _, d := range want {
		select {
		case got := <-details:
			if got != d {
				t.Fatalf("detail %q, want %q", got, d)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no detail %q", d)
		}
	}
	w.WriteString("I: installing remaining packages inside the chroot...\nE: apt-get failed\nI: removing tempdir " + tree + "...\n")
	w.Close()
	<-done
	var last string
	for len(details) > 0 {
		last = <-details
	}
	if last != "installing remaining packages inside the chroot" {
		t.Errorf("last detail %q", last)
	}
	err := l.failure(DebianSpec{Name: "default", Suite: "bookworm"}, errors.New("exit status 1"))
	for _, want := range []string{"E: apt-get failed", "deb.debian.org", "--image tiny", "banger image import NAME --oci docker://debian:bookworm"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("failure lacks %q: %v", want, err)
		}
	}
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("failure is not unavailable: %v", err)
	}
}
