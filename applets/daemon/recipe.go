package daemon

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"banger/applets/daemon/imagestore"
	"banger/internal/api"
	"banger/rpc"
)

// Bounds of a recipe: it is a request, and its steps are stages.
const (
	maxRecipeSteps = 100
	maxRunLen      = 64 << 10
)

// recipe is a checked api.Recipe.
type recipe struct {
	api.Recipe
	suite  string     // Distro's Debian suite; "" with From
	copies []copyStep // Copy, split
}

// copyStep is one HOST:GUEST of a recipe.
type copyStep struct {
	host, guest string
	dir         bool // host is a directory: its content goes into guest
}

// checkRecipe validates an image build before anything runs, with
// errors that say what to give instead.
func checkRecipe(p api.ImageBuild) (recipe, error) {
	r := recipe{Recipe: p.Recipe}
	if err := api.ValidName("image", p.Name); err != nil {
		return r, err
	}
	if p.CPUs < 0 || p.CPUs > api.MaxCPUs || p.MemoryMiB != 0 && (p.MemoryMiB < api.MinMemoryMiB || p.MemoryMiB > api.MaxMemoryMiB) {
		return r, rpc.Errorf(rpc.CodeInvalidParams, "the build VM's cpus (%d) or memory (%d MiB) is out of range", p.CPUs, p.MemoryMiB)
	}
	switch {
	case (r.Distro == "") == (r.From == ""):
		return r, rpc.Errorf(rpc.CodeInvalidParams, "give the base of the build: --distro debian/SUITE or --from IMAGE, one of them")
	case r.From != "":
		if err := api.ValidName("image", r.From); err != nil {
			return r, err
		}
		if len(r.Packages)+len(r.Copy)+len(r.Run) == 0 {
			return r, rpc.Errorf(rpc.CodeInvalidParams, "nothing to build on image %s: give --package, --copy or --run", r.From)
		}
	default:
		distro, suite, _ := strings.Cut(r.Distro, "/")
		if distro != "debian" {
			return r, rpc.Errorf(rpc.CodeInvalidParams, "distro %q is not one banger builds; give debian/SUITE (such as debian/%s), or --from an image", r.Distro, imagestore.DefaultSuite)
		}
		r.suite = suite
		if suite == "" {
			r.suite = imagestore.DefaultSuite
		}
		if err := imagestore.CheckSuite(r.suite); err != nil {
			return r, err
		}
	}
	if err := imagestore.CheckPackages(r.Packages); err != nil {
		return r, err
	}
	if n := len(r.Copy) + len(r.Run); n > maxRecipeSteps {
		return r, rpc.Errorf(rpc.CodeInvalidParams, "the recipe has %d copies and commands; at most %d", n, maxRecipeSteps)
	}
	for _, c := range r.Copy {
		st, err := checkCopy(c)
		if err != nil {
			return r, err
		}
		r.copies = append(r.copies, st)
	}
	for i, cmd := range r.Run {
		if strings.TrimSpace(cmd) == "" || len(cmd) > maxRunLen || strings.ContainsRune(cmd, 0) {
			return r, rpc.Errorf(rpc.CodeInvalidParams, "command %d of the recipe is empty, longer than %d KiB or holds a NUL byte", i+1, maxRunLen>>10)
		}
	}
	return r, nil
}

// checkCopy splits a HOST:GUEST at its last colon (a host path may have
// some; the guest path is absolute, so what follows starts with /).
func checkCopy(c string) (copyStep, error) {
	i := strings.LastIndex(c, ":")
	if i < 0 {
		return copyStep{}, rpc.Errorf(rpc.CodeInvalidParams, "copy %q is not HOST:GUEST", c)
	}
	st := copyStep{host: c[:i], guest: c[i+1:]}
	if !filepath.IsAbs(st.host) {
		return st, rpc.Errorf(rpc.CodeInvalidParams, "copy %q: the host path must be absolute (the daemon reads it)", c)
	}
	if !path.IsAbs(st.guest) || strings.ContainsAny(st.guest, "\x00\n") {
		return st, rpc.Errorf(rpc.CodeInvalidParams, "copy %q: the guest path must be absolute, such as /opt/app", c)
	}
	st.guest = path.Clean(st.guest)
	fi, err := os.Stat(st.host)
	if err != nil {
		return st, rpc.Errorf(rpc.CodeNotFound, "copy %q: %v", c, err)
	}
	switch {
	case fi.IsDir():
		st.dir = true
	case !fi.Mode().IsRegular():
		return st, rpc.Errorf(rpc.CodeInvalidParams, "copy %q: %s is neither a file nor a directory", c, st.host)
	case st.guest == "/":
		return st, rpc.Errorf(rpc.CodeInvalidParams, "copy %q: a file needs a guest path to become, not /", c)
	}
	return st, nil
}

// buildKey is the content key of a build: the recipe as given, what its
// base is (the suite and mirror, or the base image's digest) and what its
// copies hold. The same key makes the same image, and a build whose image
// already has it does nothing.
func buildKey(r recipe, mirror, baseDigest string) (string, error) {
	type copyKey struct{ Guest, Tree string }
	k := struct {
		V                         int
		Suite, Mirror, From, Base string
		Packages, Run             []string
		Copies                    []copyKey
	}{V: 1, Suite: r.suite, From: r.From, Base: baseDigest, Packages: r.Packages, Run: r.Run}
	if r.suite != "" {
		k.Mirror = mirror
	}
	for _, c := range r.copies {
		tree, err := treeDigest(c.host)
		if err != nil {
			return "", fmt.Errorf("read %s: %w", c.host, err)
		}
		k.Copies = append(k.Copies, copyKey{Guest: c.guest, Tree: tree})
	}
	h := sha256.New()
	if err := json.NewEncoder(h).Encode(k); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// treeDigest hashes what a copy of root takes: each entry's name, type,
// mode, and its content or link target, in the walk's (lexical) order.
func treeDigest(root string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fmt.Fprintf(h, "%q %o\n", filepath.ToSlash(rel), fi.Mode())
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "-> %q\n", link)
		case fi.Mode().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			n, err := io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "\n%d\n", n)
		}
		return nil
	})
	return hex.EncodeToString(h.Sum(nil)), err
}
