// Package ocitest builds OCI images for tests with go-containerregistry:
// layers from tar entries, linux images with a known config, and an
// in-process registry to serve them. Only tests import it.
package ocitest

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Entry is one member of a layer.
type Entry struct {
	Name, Link, Body string
	Type             byte
	Mode             int64
	UID, GID         int
	PAX              map[string]string // such as SCHILY.xattr.* records
}

// MTime is every entry's modification time (0x6553f100).
var MTime = time.Unix(1700000000, 0)

// Layer is a gzip layer of entries, as ggcr builds one.
func Layer(t testing.TB, entries []Entry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Linkname: e.Link, Typeflag: e.Type, Mode: e.Mode, Uid: e.UID, Gid: e.GID,
			ModTime: MTime, PAXRecords: e.PAX, Format: tar.FormatPAX}
		if e.Type == tar.TypeReg {
			h.Size = int64(len(e.Body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.Body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Config is the config of every image Image makes.
func Config() v1.Config {
	return v1.Config{Env: []string{"PATH=/usr/bin:/bin", "GREETING=hi"}, WorkingDir: "/home/user", User: "1000:1000",
		Entrypoint: []string{"/usr/bin/tool"}, Cmd: []string{"--help"}}
}

// Image is layers on an empty linux image for arch, with Config.
func Image(t testing.TB, arch string, layers ...v1.Layer) v1.Image {
	t.Helper()
	return ImageWith(t, arch, Config(), layers...)
}

// ImageWith is Image with another config.
func ImageWith(t testing.TB, arch string, config v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config = config
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// Registry starts an in-process registry for the test and returns its
// host:port (loopback, so ggcr speaks plain HTTP to it).
func Registry(t testing.TB) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// AuthRegistry is Registry behind HTTP basic authentication: a
// request without user and password is answered 401, with the
// challenge a client answers with its credentials.
func AuthRegistry(t testing.TB, user, password string) string {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != password {
			w.Header().Set("WWW-Authenticate", `Basic realm="ocitest"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// Push writes img to the registry reference ref.
func Push(t testing.TB, ref string, img v1.Image, opts ...remote.Option) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, opts...); err != nil {
		t.Fatal(err)
	}
}

// PushIndex writes an index of images, by architecture, to ref.
func PushIndex(t testing.TB, ref string, imgs map[string]v1.Image) {
	t.Helper()
	var adds []mutate.IndexAddendum
	for arch, img := range imgs {
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, mutate.AppendManifests(empty.Index, adds...)); err != nil {
		t.Fatal(err)
	}
}

// Capability is a security.capability extended attribute (cap_net_raw),
// as setcap writes it.
const Capability = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// Layers are three layers that need flattening right: a whiteout of a
// file and of a directory, an opaque directory, a replaced file, a hard
// link in a layer and one to a lower layer's file, non-root owners, a
// symlink, a setuid file and a file capability.
// The extra entries go in the lowest layer.
func Layers(t testing.TB, extra ...Entry) []v1.Layer {
	const dir, reg = tar.TypeDir, tar.TypeReg
	base := append([]Entry{
		{Name: "etc/", Type: dir, Mode: 0o755},
		{Name: "etc/hello", Type: reg, Mode: 0o644, Body: "base\n"},
		{Name: "usr/", Type: dir, Mode: 0o755},
		{Name: "usr/bin/", Type: dir, Mode: 0o755},
		{Name: "usr/bin/tool", Type: reg, Mode: 0o755, Body: "tool"},
		{Name: "opt/", Type: dir, Mode: 0o755},
		{Name: "opt/old/", Type: dir, Mode: 0o755},
		{Name: "opt/old/a", Type: reg, Mode: 0o644, Body: "a"},
		{Name: "data/", Type: dir, Mode: 0o755},
		{Name: "data/x", Type: reg, Mode: 0o644, Body: "x"},
		{Name: "data/y", Type: reg, Mode: 0o644, Body: "y"},
		{Name: "var/", Type: dir, Mode: 0o755},
		{Name: "var/gone", Type: reg, Mode: 0o644, Body: "gone"},
		{Name: "home/", Type: dir, Mode: 0o755},
		{Name: "home/user/", Type: dir, Mode: 0o750, UID: 1000, GID: 1000},
		{Name: "home/user/.profile", Type: reg, Mode: 0o600, UID: 1000, GID: 1000, Body: "PS1=$"},
	}, extra...)
	middle := []Entry{
		{Name: "var/.wh.gone", Type: reg},
		{Name: "data/", Type: dir, Mode: 0o755},
		{Name: "data/.wh..wh..opq", Type: reg},
		{Name: "data/z", Type: reg, Mode: 0o644, Body: "z"},
		{Name: "etc/hello", Type: reg, Mode: 0o644, Body: "top\n"},
		{Name: "usr/bin/ping", Type: reg, Mode: 0o755, Body: "ping", PAX: map[string]string{"SCHILY.xattr.security.capability": Capability}},
		{Name: "usr/bin/su", Type: reg, Mode: 0o4755, Body: "su"},
		{Name: "usr/bin/su-link", Type: tar.TypeLink, Link: "usr/bin/su"},
		{Name: "usr/bin/sh", Type: tar.TypeSymlink, Link: "/bin/busybox", Mode: 0o777},
	}
	top := []Entry{
		{Name: "opt/.wh.old", Type: reg},
		{Name: "home/user/notes", Type: reg, Mode: 0o640, UID: 1000, GID: 1001, Body: "n"},
		{Name: "usr/bin/tool-link", Type: tar.TypeLink, Link: "usr/bin/tool"}, // to a lower layer's file
	}
	return []v1.Layer{Layer(t, base), Layer(t, middle), Layer(t, top)}
}
