package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/rpc"
)

func TestCheckRecipe(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	os.WriteFile(file, []byte("x"), 0o644)
	ok := func(r api.Recipe) recipe {
		t.Helper()
		got, err := checkRecipe(api.ImageBuild{Name: "img", Recipe: r})
		if err != nil {
			t.Fatalf("%+v: %v", r, err)
		}
		return got
	}
	if r := ok(api.Recipe{Distro: "debian"}); r.suite != "bookworm" {
		t.Errorf("debian alone: suite %q", r.suite)
	}
	if r := ok(api.Recipe{Distro: "debian/trixie", Copy: []string{dir + ":/opt/a", file + ":/etc/f"}}); r.suite != "trixie" ||
		len(r.copies) != 2 || !r.copies[0].dir || r.copies[1].dir || r.copies[1].guest != "/etc/f" {
		t.Errorf("copies: %+v", r.copies)
	}
	for _, c := range []struct {
		r    api.Recipe
		code string
		says string
	}{
		{api.Recipe{}, rpc.CodeInvalidParams, "--distro debian/SUITE or --from IMAGE"},
		{api.Recipe{Distro: "debian", From: "tiny"}, rpc.CodeInvalidParams, "one of them"},
		{api.Recipe{From: "tiny"}, rpc.CodeInvalidParams, "nothing to build"},
		{api.Recipe{Distro: "fedora/40"}, rpc.CodeInvalidParams, "debian/SUITE"},
		{api.Recipe{Distro: "debian/Bad Suite"}, rpc.CodeInvalidParams, "not a Debian suite"},
		{api.Recipe{Distro: "debian", Packages: []string{"jq; rm -rf /"}}, rpc.CodeInvalidParams, "not a Debian package"},
		{api.Recipe{From: "tiny", Copy: []string{"relative:/x"}}, rpc.CodeInvalidParams, "must be absolute"},
		{api.Recipe{From: "tiny", Copy: []string{file + ":x"}}, rpc.CodeInvalidParams, "guest path must be absolute"},
		{api.Recipe{From: "tiny", Copy: []string{file + ":/"}}, rpc.CodeInvalidParams, "not /"},
		{api.Recipe{From: "tiny", Copy: []string{filepath.Join(dir, "none") + ":/x"}}, rpc.CodeNotFound, "no such file"},
		{api.Recipe{From: "tiny", Copy: []string{"/dev/null:/x"}}, rpc.CodeInvalidParams, "neither a file nor a directory"},
		{api.Recipe{From: "tiny", Run: []string{"  "}}, rpc.CodeInvalidParams, "empty"},
		{api.Recipe{From: "tiny", Run: []string{"a\x00b"}}, rpc.CodeInvalidParams, "NUL"},
		{api.Recipe{From: "tiny", Run: make([]string, maxRecipeSteps+1)}, rpc.CodeInvalidParams, "at most"},
	} {
		_, err := checkRecipe(api.ImageBuild{Name: "img", Recipe: c.r})
		if rpc.CodeOf(err) != c.code || err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%+v: %v; want %s saying %q", c.r, err, c.code, c.says)
		}
	}
	if _, err := checkRecipe(api.ImageBuild{Name: "Bad_Name", Recipe: api.Recipe{Distro: "debian"}}); rpc.CodeOf(err) != rpc.CodeInvalidParams {
		t.Errorf("a bad image name: %v", err)
	}
}

// The key follows what the build makes: the recipe, the base and what
// the copies hold, and nothing else.
func TestBuildKey(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a"), []byte("one"), 0o644)
	r, err := checkRecipe(api.ImageBuild{Name: "img", Recipe: api.Recipe{From: "tiny", Copy: []string{dir + ":/srv"}, Run: []string{"make"}}})
	if err != nil {
		t.Fatal(err)
	}
	key := func(r recipe, mirror, base string) string {
		t.Helper()
		k, err := buildKey(r, mirror, base)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k := key(r, "", "sha256:base")
	if !strings.HasPrefix(k, "sha256:") || key(r, "", "sha256:base") != k {
		t.Fatalf("key %q is not stable", k)
	}
	if key(r, "http://mirror", "sha256:base") != k {
		t.Error("the mirror changed the key of a build on an image")
	}
	if key(r, "", "sha256:other") == k {
		t.Error("another base, the same key")
	}
	os.WriteFile(filepath.Join(dir, "a"), []byte("two"), 0o644)
	if key(r, "", "sha256:base") == k {
		t.Error("a copied file changed, the same key")
	}
	os.WriteFile(filepath.Join(dir, "a"), []byte("one"), 0o644)
	os.Chmod(filepath.Join(dir, "a"), 0o755)
	if key(r, "", "sha256:base") == k {
		t.Error("a copied file's mode changed, the same key")
	}
	os.Chmod(filepath.Join(dir, "a"), 0o644)
	if key(r, "", "sha256:base") != k {
		t.Error("the same content again, another key")
	}
	r2 := r
	r2.Run = []string{"make test"}
	if key(r2, "", "sha256:base") == k {
		t.Error("another command, the same key")
	}
}
