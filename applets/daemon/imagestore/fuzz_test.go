package imagestore

import (
	"archive/tar"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// FuzzStageTar unpacks arbitrary archives into a staging tree and checks
// that nothing is ever written beside it: whatever the archive says, it
// stays inside, or is refused.
func FuzzStageTar(f *testing.F) {
	dir := f.TempDir()
	for i, entries := range [][]tarEntry{
		rootTar(),
		{{name: "../x", typ: tar.TypeReg, body: "x"}},
		{{name: "l", typ: tar.TypeSymlink, link: "/.."}, {name: "l/x", typ: tar.TypeReg, body: "x"}},
		{{name: "l", typ: tar.TypeSymlink, link: "../../.."}, {name: "l/d/", typ: tar.TypeDir, mode: 0o755},
			{name: "l/d/x", typ: tar.TypeLink, link: "l/../../etc/passwd"}},
		{{name: "a", typ: tar.TypeSymlink, link: "b"}, {name: "b", typ: tar.TypeSymlink, link: "a"},
			{name: "a/x", typ: tar.TypeReg, body: "x"}},
	} {
		data, _ := os.ReadFile(writeTar(f, filepath.Join(dir, "seed"+string(rune('a'+i))+".tar"), entries, nil))
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		archive := filepath.Join(parent, "in.tar")
		os.WriteFile(archive, data, 0o644)
		st, err := newStager(filepath.Join(parent, "root"))
		if err != nil {
			t.Fatal(err)
		}
		defer st.close()
		stageTarFile(context.Background(), st, archive) // refusals are fine
		entries, _ := os.ReadDir(parent)
		if len(entries) != 2 {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Fatalf("the archive wrote beside the staging tree: %v", names)
		}
	})
}
