package client

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// runSplit runs a one-command app on args and returns what splitCommand
// made of them.
func runSplit(t *testing.T, args ...string) (pos, cmd []string, err error) {
	t.Helper()
	app := &cli.App{
		Name:     "banger",
		Metadata: map[string]any{argsKey: args},
		Commands: []*cli.Command{{
			Name:  "run",
			Flags: []cli.Flag{&cli.BoolFlag{Name: "rm"}},
			Action: func(c *cli.Context) error {
				pos, cmd, err = splitCommand(c, 0, 1)
				return nil
			},
		}},
	}
	if runErr := app.Run(args); runErr != nil {
		t.Fatal(runErr)
	}
	return pos, cmd, err
}

func TestSplitCommand(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		pos, cmd []string
		bad      bool
	}{
		{args: []string{"run"}},
		{args: []string{"run", "./repo"}, pos: []string{"./repo"}},
		{args: []string{"run", "--", "uname", "-a"}, cmd: []string{"uname", "-a"}},
		{args: []string{"run", "--rm", "--", "true"}, cmd: []string{"true"}},
		{args: []string{"run", "./repo", "--", "make", "test"}, pos: []string{"./repo"}, cmd: []string{"make", "test"}},
		{args: []string{"run", "--", "cargo", "test", "--", "--nocapture"}, cmd: []string{"cargo", "test", "--", "--nocapture"}},
		{args: []string{"run", "./repo", "--", "a", "--", "b"}, pos: []string{"./repo"}, cmd: []string{"a", "--", "b"}},
		{args: []string{"run", "./repo", "--rm", "--", "true"}, bad: true},
		{args: []string{"run", "a", "b"}, bad: true},
	} {
		pos, cmd, err := runSplit(t, append([]string{"banger"}, tc.args...)...)
		if tc.bad {
			if err == nil {
				t.Errorf("%q: no error (pos %q, cmd %q)", tc.args, pos, cmd)
			}
			continue
		}
		if err != nil || !slices.Equal(pos, tc.pos) || !slices.Equal(cmd, tc.cmd) {
			t.Errorf("%q: pos %q cmd %q err %v; want pos %q cmd %q", tc.args, pos, cmd, err, tc.pos, tc.cmd)
		}
	}
}

func TestParsePublish(t *testing.T) {
	f, err := parsePublish("8080:80")
	if err != nil || f.HostAddr != "127.0.0.1" || f.HostPort != 8080 || f.GuestPort != 80 || f.Proto != "tcp" {
		t.Errorf("8080:80 = %+v, %v", f, err)
	}
	if f, err := parsePublish("127.0.0.2:1:2/tcp"); err != nil || f.HostAddr != "127.0.0.2" {
		t.Errorf("with an address: %+v, %v", f, err)
	}
	for _, bad := range []string{"", "80", "0:80", "80:0", "70000:1", "a:b", "10.0.0.1:1:2", "[::1]:1:2", "1:2/udp", "0.0.0.0:1:2"} {
		if _, err := parsePublish(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// tarNames lists a tar stream's entries as "name type".
func tarNames(t *testing.T, w *workspace) []string {
	t.Helper()
	var buf bytes.Buffer
	if _, err := w.writeTar(&buf); err != nil {
		t.Fatal(err)
	}
	var names []string
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name+" "+string(h.Typeflag))
	}
}

func TestWorkspaceOfAPlainDirectoryThroughASymlink(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	os.MkdirAll(filepath.Join(real, "empty"), 0o755)
	os.MkdirAll(filepath.Join(real, "a"), 0o755)
	os.WriteFile(filepath.Join(real, "a", "f"), []byte("x"), 0o644)
	os.Symlink("a/f", filepath.Join(real, "link"))
	os.Symlink(real, filepath.Join(dir, "via"))
	w, err := openWorkspace(filepath.Join(dir, "via"), false)
	if err != nil {
		t.Fatal(err)
	}
	if w.git || w.name != "real" || w.workdir() != "~/real" {
		t.Errorf("workspace %+v", w)
	}
	got := strings.Join(tarNames(t, w), ",")
	want := "a/ 5,a/f 0,empty/ 5,link 2"
	if got != want {
		t.Errorf("entries %s, want %s", got, want)
	}
}

func TestWorkspaceOfAGitSubdirectory(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("no git")
	}
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	os.MkdirAll(filepath.Join(repo, "src"), 0o755)
	os.MkdirAll(filepath.Join(repo, "build"), 0o755)
	os.WriteFile(filepath.Join(repo, "src", "main.c"), []byte("int main;"), 0o644)
	os.WriteFile(filepath.Join(repo, ".gitignore"), []byte("build/\n"), 0o644)
	os.WriteFile(filepath.Join(repo, "build", "out"), []byte("ignored"), 0o644)
	for _, a := range [][]string{{"init", "-q"}, {"add", "."}} {
		if out, err := exec.Command("git", append([]string{"-C", repo}, a...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", a, err, out)
		}
	}
	os.Symlink(repo, filepath.Join(dir, "via"))
	w, err := openWorkspace(filepath.Join(dir, "via", "build"), false)
	if err != nil {
		t.Fatal(err)
	}
	if !w.git || w.workdir() != "~/repo/build" {
		t.Errorf("workspace %+v, workdir %s", w, w.workdir())
	}
	// The ignored directory the command starts in exists in the copy, its
	// contents do not.
	got := strings.Join(tarNames(t, w), ",")
	want := "build/ 5,.gitignore 0,src/ 5,src/main.c 0"
	if got != want {
		t.Errorf("entries %s, want %s", got, want)
	}
}
