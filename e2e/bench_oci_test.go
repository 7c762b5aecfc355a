package e2e_test

import (
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"banger/applets/daemon/imagestore"
	"banger/internal/ocitest"
	"banger/internal/treetar"
)

// ociBenchBytes is about how much the benchmark's image holds.
const ociBenchBytes = 100 << 20

// hostTreeLayers are layers of real files (the host's /usr: libraries,
// binaries, text, compressing as a real image's do), about max bytes in
// all, in three layers of about a third each.
func hostTreeLayers(b *testing.B, dir string, max int64) []v1.Layer {
	b.Helper()
	var files []string
	var total int64
	filepath.WalkDir("/usr", func(p string, d fs.DirEntry, err error) error {
		switch {
		case total >= max:
			return fs.SkipAll
		case err != nil:
			return nil // unreadable: not in the image
		}
		if fi, err := d.Info(); err == nil && fi.Mode().IsRegular() {
			files = append(files, p[1:])
			total += fi.Size()
		}
		return nil
	})
	var layers []v1.Layer
	for i := 0; i < 3; i++ {
		file := filepath.Join(dir, "layer"+strconv.Itoa(i)+".tar")
		f, err := os.Create(file)
		if err != nil {
			b.Fatal(err)
		}
		tw := treetar.New(f, "/")
		for _, name := range files[i*len(files)/3 : (i+1)*len(files)/3] {
			if err := tw.Add(name, false); err != nil {
				b.Fatal(err)
			}
		}
		if err := tw.Close(); err != nil {
			b.Fatal(err)
		}
		f.Close()
		l, err := tarball.LayerFromFile(file)
		if err != nil {
			b.Fatal(err)
		}
		layers = append(layers, l)
	}
	b.Logf("image of %d files, %d MiB, in 3 layers", len(files), total>>20)
	return layers
}

// BenchmarkOCIImport measures, interleaved, `banger image import --oci`
// of an image of about 100 MiB from an in-process registry, against what
// the same takes with the tools users know: `skopeo copy` to an OCI
// layout, the layers unpacked in order with tar, and `mkfs.ext4 -d` of
// the tree (without the whiteouts banger handles: the image has none).
func BenchmarkOCIImport(b *testing.B) {
	for _, tool := range []string{"skopeo", "mkfs.ext4", "tar"} {
		if _, err := imagestore.LookTool(tool); err != nil {
			b.Skip(tool + " is not installed (packaging/test.sh installs it)")
		}
	}
	v := newVMBench(b)
	ref := ocitest.Registry(b) + "/bench/usr:v1"
	ocitest.Push(b, ref, ocitest.Image(b, "amd64", hostTreeLayers(b, v.dir, ociBenchBytes)...))
	mkfs, _ := imagestore.LookTool("mkfs.ext4")

	var banger, tools []time.Duration
	i := 0
	for b.Loop() {
		name := "oci" + strconv.Itoa(i)
		start := time.Now()
		v.mustRun("image", "import", "-q", "--oci", "docker://"+ref, name)
		banger = append(banger, time.Since(start))
		v.mustRun("image", "delete", name)

		layout, tree, img := filepath.Join(v.dir, "layout"), filepath.Join(v.dir, "tree"), filepath.Join(v.dir, "tools.ext4")
		start = time.Now()
		benchCmd(b, "skopeo", "copy", "-q", "--src-tls-verify=false", "docker://"+ref, "oci:"+layout+":v1")
		os.Mkdir(tree, 0o755)
		for _, blob := range layoutLayers(b, layout) {
			benchCmd(b, "tar", "-xzf", blob, "-C", tree)
		}
		benchCmd(b, mkfs, "-q", "-F", "-d", tree, img, "400M")
		tools = append(tools, time.Since(start))
		for _, p := range []string{layout, tree, img} {
			os.RemoveAll(p)
		}
		b.Logf("round %d: banger import %.2f s, skopeo + tar + mkfs.ext4 -d %.2f s", i, ms(banger[i])/1000, ms(tools[i])/1000)
		i++
	}
	b.ReportMetric(medianMS(banger)/1000, "banger-p50-s")
	b.ReportMetric(medianMS(tools)/1000, "tools-p50-s")
	b.ReportMetric(medianMS(banger)/medianMS(tools), "banger/tools")
}

func benchCmd(b *testing.B, name string, args ...string) {
	b.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		b.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// layoutLayers are the layer blobs of an OCI layout's one image, in
// order.
func layoutLayers(b *testing.B, layout string) []string {
	b.Helper()
	var index struct {
		Manifests []struct{ Digest v1.Hash } `json:"manifests"`
	}
	readJSON(b, filepath.Join(layout, "index.json"), &index)
	if len(index.Manifests) != 1 {
		b.Fatalf("layout index has %d manifests", len(index.Manifests))
	}
	var m struct {
		Layers []struct{ Digest v1.Hash } `json:"layers"`
	}
	readJSON(b, blobPath(layout, index.Manifests[0].Digest), &m)
	var out []string
	for _, l := range m.Layers {
		out = append(out, blobPath(layout, l.Digest))
	}
	return out
}

func blobPath(layout string, h v1.Hash) string {
	return filepath.Join(layout, "blobs", h.Algorithm, h.Hex)
}

func readJSON(b *testing.B, file string, v any) {
	b.Helper()
	data, err := os.ReadFile(file)
	if err == nil {
		err = json.Unmarshal(data, v)
	}
	if err != nil {
		b.Fatal(err)
	}
}
