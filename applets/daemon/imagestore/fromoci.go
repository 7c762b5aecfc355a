package imagestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"banger/internal/api"
	"banger/internal/errdefs"
)

// OCIImage is what an image made from an OCI image keeps of it, in its
// manifest.
type OCIImage = api.OCIImage

// ociPlatform is the only platform banger's guests run.
var ociPlatform = v1.Platform{OS: "linux", Architecture: "amd64"}

// noPlatformError is a reference without a linux/amd64 image, with the
// platforms it has.
type noPlatformError struct{ has []string }

func (e *noPlatformError) Error() string {
	has := "none"
	if len(e.has) > 0 {
		has = strings.Join(e.has, ", ")
	}
	return "no linux/amd64 image (it has " + has + ")"
}

// Progress is told how many compressed bytes of an OCI image's layers
// have been read, of total. It is called often; it must be cheap.
type Progress func(done, total int64)

// ociSource checks the reference s, and the file or directory of a
// local transport, before anything is written.
func ociSource(s string, progress Progress) (rootfsSource, error) {
	ref, err := api.ParseOCIRef(s)
	if err != nil {
		return rootfsSource{}, err
	}
	switch ref.Transport {
	case api.OCILayout:
		fi, err := os.Stat(ref.Path)
		if err != nil {
			return rootfsSource{}, missing("OCI layout", ref.Path, "give the directory of an OCI layout (oci:DIR[:TAG])", err)
		}
		if !fi.IsDir() {
			return rootfsSource{}, errdefs.Errorf(errdefs.ErrInvalid, "OCI layout %s is not a directory; a tar of one is oci-archive:FILE", ref.Path)
		}
	case api.OCIDockerArchive, api.OCIArchive:
		if err := checkFile(ref.Transport, ref.Path, "give the archive file ("+ref.Transport+":FILE)"); err != nil {
			return rootfsSource{}, err
		}
	}
	info := new(OCIImage)
	return rootfsSource{from: Origin{Kind: OriginOCI, Path: ref.String()}, oci: info,
		populate: func(ctx context.Context, st *stager) error { return stageOCI(ctx, st, ref, info, progress) }}, nil
}

// stageOCI flattens the OCI image ref names (its layers with their
// whiteouts and opaque directories, by mutate.Extract) into the staging
// tree through stageTar, and records its config in info. Every blob read
// is checked against its digest: a corrupt or truncated layer fails with
// the layer's digest named.
func stageOCI(ctx context.Context, st *stager, ref api.OCIRef, info *OCIImage, progress Progress) (err error) {
	defer func() {
		// A cancel fails whatever was being read: say it was the cancel,
		// not a bad image.
		if err != nil && ctx.Err() != nil {
			err = ctx.Err()
		}
	}()
	img, digest, cleanup, err := openOCI(ctx, ref, st)
	if err != nil {
		return err
	}
	defer cleanup()
	cf, err := img.ConfigFile()
	if err != nil {
		return errdefs.Errorf(errdefs.ErrInvalid, "the config of %s cannot be read: %v", ref, err)
	}
	*info = OCIImage{Reference: ref.String(), Digest: digest.String(), Env: cf.Config.Env, WorkingDir: cf.Config.WorkingDir,
		User: cf.Config.User, Entrypoint: cf.Config.Entrypoint, Cmd: cf.Config.Cmd}
	checked, err := checkLayers(img, progress)
	if err != nil {
		return errdefs.Errorf(errdefs.ErrInvalid, "the layers of %s cannot be read: %v", ref, err)
	}
	rc := mutate.Extract(checked)
	defer rc.Close()
	return stageTar(ctx, st, flatReader{rc, checked}, "the OCI image "+ref.String())
}

// openOCI opens the linux/amd64 image of ref, with its manifest digest,
// checked; cleanup removes what opening it unpacked.
func openOCI(ctx context.Context, ref api.OCIRef, st *stager) (v1.Image, v1.Hash, func(), error) {
	cleanup := func() {}
	var img v1.Image
	var want v1.Hash
	var err error
	switch ref.Transport {
	case api.OCIDocker:
		img, want, err = openRemote(ctx, ref)
	case api.OCILayout:
		img, want, err = openLayout(ref.Path, ref.Name)
	case api.OCIArchive:
		var dir string
		if dir, err = unpackLayout(ctx, ref.Path, st); err != nil {
			return nil, want, cleanup, err
		}
		cleanup = func() { removeScratch(dir) }
		img, want, err = openLayout(dir, ref.Name)
	case api.OCIDockerArchive:
		img, err = openDockerArchive(ref)
		if err == nil {
			want, err = img.Digest()
		}
	default:
		err = errdefs.Errorf(errdefs.ErrInvalid, "unknown OCI transport %q", ref.Transport)
	}
	if err == nil {
		err = checkOCIImage(img, want)
	}
	if np := new(noPlatformError); errors.As(err, &np) {
		err = errdefs.Errorf(errdefs.ErrInvalid, "%s has %v; banger's guests are amd64 only", ref, np)
	} else if err != nil && !errors.As(err, new(*errdefs.Error)) {
		err = errdefs.Errorf(errdefs.ErrInvalid, "open the OCI image %s: %v", ref, err)
	}
	if err != nil {
		cleanup()
		return nil, want, func() {}, err
	}
	return img, want, cleanup, nil
}

// openRemote reads ref from its registry, anonymously or with the
// credentials of ~/.docker/config.json or $REGISTRY_AUTH_FILE (ggcr's
// default keychain). A loopback or private registry is spoken to in
// plain HTTP, as ggcr does.
func openRemote(ctx context.Context, ref api.OCIRef) (v1.Image, v1.Hash, error) {
	r, err := name.ParseReference(ref.Name)
	if err != nil {
		return nil, v1.Hash{}, errdefs.Errorf(errdefs.ErrInvalid, "%s is not a registry reference: %v; give docker://HOST/REPO:TAG or @sha256:…", ref, err)
	}
	desc, err := remote.Get(r, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain))
	if err != nil {
		return nil, v1.Hash{}, registryError(ctx, ref, err)
	}
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, v1.Hash{}, registryError(ctx, ref, err)
		}
		return pickImage(idx, "")
	}
	img, err := desc.Image()
	if err != nil {
		return nil, v1.Hash{}, registryError(ctx, ref, err)
	}
	return img, desc.Digest, nil
}

// registryError gives a registry's refusal its kind and what to do.
func registryError(ctx context.Context, ref api.OCIRef, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusNotFound:
			return errdefs.Errorf(errdefs.ErrNotFound, "%s is not in its registry: %v", ref, err)
		case http.StatusUnauthorized, http.StatusForbidden:
			return errdefs.Errorf(errdefs.ErrInvalid, "the registry refuses %s: %v; log in (docker login, podman login) so ~/.docker/config.json or $REGISTRY_AUTH_FILE holds credentials", ref, err)
		}
		return errdefs.Errorf(errdefs.ErrFailed, "the registry of %s: %v", ref, err)
	}
	return errdefs.Errorf(errdefs.ErrUnavailable, "cannot read %s from its registry: %v", ref, err)
}

// openLayout opens the image of the OCI layout at dir: the one tagged
// tag, or its only one, or the linux/amd64 one of an index.
func openLayout(dir, tag string) (v1.Image, v1.Hash, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, v1.Hash{}, errdefs.Errorf(errdefs.ErrInvalid, "%s is not an OCI layout: %v", dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, v1.Hash{}, errdefs.Errorf(errdefs.ErrInvalid, "the index of the OCI layout %s cannot be read: %v", dir, err)
	}
	return pickImage(idx, tag)
}

// refNameAnnotation tags a manifest of an OCI layout's index.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// pickImage returns the linux/amd64 image of idx (among the manifests
// tagged tag, when tag is given), looking into nested indexes.
func pickImage(idx v1.ImageIndex, tag string) (v1.Image, v1.Hash, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, v1.Hash{}, err
	}
	var has []string
	found := false
	for _, d := range im.Manifests {
		if tag != "" && d.Annotations[refNameAnnotation] != tag {
			continue
		}
		found = true
		switch {
		case d.MediaType.IsIndex():
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, v1.Hash{}, err
			}
			img, h, err := pickImage(child, "")
			if np := new(noPlatformError); errors.As(err, &np) {
				has = append(has, np.has...)
				continue
			}
			return img, h, err
		case d.MediaType.IsImage():
			if d.Platform != nil && !d.Platform.Satisfies(ociPlatform) {
				has = append(has, d.Platform.String())
				continue
			}
			img, err := idx.Image(d.Digest)
			if err != nil {
				return nil, v1.Hash{}, err
			}
			// No platform in the index: the config says. One that cannot
			// be read is no image to run (an attestation, say).
			if err := checkPlatform(img); err != nil {
				if np := new(noPlatformError); errors.As(err, &np) {
					has = append(has, np.has...)
				}
				continue
			}
			return img, d.Digest, nil
		}
	}
	if !found && tag != "" {
		return nil, v1.Hash{}, errdefs.Errorf(errdefs.ErrNotFound, "no image is tagged %q in the OCI layout", tag)
	}
	return nil, v1.Hash{}, &noPlatformError{has: has}
}

// checkPlatform says whether img's config is linux/amd64.
func checkPlatform(img v1.Image) error {
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	if p := cf.Platform(); p != nil && !p.Satisfies(ociPlatform) {
		return &noPlatformError{has: []string{p.String()}}
	}
	return nil
}

// checkOCIImage checks that img is linux/amd64, and that its manifest and
// config match their digests (ggcr checks them from a registry, not from
// a local layout).
func checkOCIImage(img v1.Image, want v1.Hash) error {
	if err := checkPlatform(img); err != nil {
		return err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return err
	}
	if got := sha256Hash(raw); want.Hex != "" && got != want {
		return errdefs.Errorf(errdefs.ErrInvalid, "the manifest %s is corrupt: its content has the digest %s", want, got)
	}
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	if got := sha256Hash(cfg); got != m.Config.Digest {
		return errdefs.Errorf(errdefs.ErrInvalid, "the config %s is corrupt: its content has the digest %s", m.Config.Digest, got)
	}
	return nil
}

func sha256Hash(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// openDockerArchive opens what docker save or podman save wrote: the
// image tagged ref.Name, or its only one.
func openDockerArchive(ref api.OCIRef) (v1.Image, error) {
	var tag *name.Tag
	if ref.Name != "" {
		t, err := name.NewTag(ref.Name)
		if err != nil {
			return nil, errdefs.Errorf(errdefs.ErrInvalid, "%q is not a tag: %v", ref.Name, err)
		}
		tag = &t
	}
	return tarball.ImageFromPath(ref.Path, tag)
}

// checkedImage is an image whose layers are read checked; reading says
// which layer it is in.
type checkedImage struct {
	v1.Image
	layers  []v1.Layer
	current *atomic.Pointer[v1.Hash] // the layer being read
}

func (i checkedImage) Layers() ([]v1.Layer, error) { return i.layers, nil }

// flatReader is the flattened stream of an image's layers; its errors
// name the layer they are in (mutate.Extract finds some itself, such as
// a tar header that cannot be parsed, and names none). A failing
// mutate.Extract stops at once, so the layer being read is the one.
type flatReader struct {
	io.Reader
	img checkedImage
}

func (r flatReader) Read(p []byte) (int, error) {
	n, err := r.Reader.Read(p)
	if d := r.img.current.Load(); err != nil && err != io.EOF && d != nil && !strings.Contains(err.Error(), d.String()) {
		err = fmt.Errorf("%w (in layer %s)", err, d)
	}
	return n, err
}

// checkLayers wraps img's layers so that each is checked against its
// digest as it is read, its errors name it, and progress counts its bytes.
func checkLayers(img v1.Image, progress Progress) (checkedImage, error) {
	layers, err := img.Layers()
	if err != nil {
		return checkedImage{}, err
	}
	var total int64
	for _, l := range layers {
		size, err := l.Size()
		if err != nil {
			return checkedImage{}, err
		}
		total += size
	}
	done := new(atomic.Int64)
	count := func(n int64) {
		if progress != nil {
			progress(done.Add(n), total)
		}
	}
	ci := checkedImage{Image: img, layers: make([]v1.Layer, len(layers)), current: new(atomic.Pointer[v1.Hash])}
	for i, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return checkedImage{}, err
		}
		if d.Algorithm != "sha256" {
			return checkedImage{}, errdefs.Errorf(errdefs.ErrInvalid, "layer %s has a digest algorithm banger does not check", d)
		}
		ci.layers[i] = checkedLayer{Layer: l, digest: d, count: count, current: ci.current}
	}
	return ci, nil
}

// checkedLayer is a layer whose compressed stream is checked against its
// digest as it is read.
type checkedLayer struct {
	v1.Layer
	digest  v1.Hash
	count   func(int64)
	current *atomic.Pointer[v1.Hash]
}

func (l checkedLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Compressed()
	if err != nil {
		return nil, fmt.Errorf("read layer %s: %w", l.digest, err)
	}
	return &digestReader{rc: rc, want: l.digest, h: sha256.New(), count: l.count}, nil
}

// Uncompressed decompresses the checked stream, the compression told by
// partial.CompressedToLayer as ggcr does.
func (l checkedLayer) Uncompressed() (io.ReadCloser, error) {
	l.current.Store(&l.digest)
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	cl, err := partial.CompressedToLayer(openedLayer{CompressedLayer: l.Layer, rc: rc})
	if err != nil {
		return nil, err
	}
	u, err := cl.Uncompressed()
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("read layer %s: %w", l.digest, err)
	}
	return &layerReader{rc: u, compressed: rc.(*digestReader)}, nil
}

// openedLayer is a layer whose compressed stream is already open.
type openedLayer struct {
	partial.CompressedLayer
	rc io.ReadCloser
}

func (o openedLayer) Compressed() (io.ReadCloser, error) { return o.rc, nil }

// layerReader is a layer's decompressed stream. When decompressing
// fails, it reads the rest of the compressed stream, so damaged content
// is reported as what it is (a digest that does not match), and a
// stream that is whole but does not decompress is named.
type layerReader struct {
	rc         io.ReadCloser
	compressed *digestReader
}

func (r *layerReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	if err != nil && err != io.EOF && !strings.Contains(err.Error(), r.compressed.want.String()) {
		if _, cerr := io.Copy(io.Discard, r.compressed); cerr != nil {
			return n, cerr
		}
		// The stream matched its digest: the layer itself is bad.
		err = errdefs.Errorf(errdefs.ErrInvalid, "layer %s cannot be decompressed: %v", r.compressed.want, err)
	}
	return n, err
}

func (r *layerReader) Close() error { return r.rc.Close() }

// digestReader checks what it reads against want when it reaches the
// end, counts it, and names want in every error.
type digestReader struct {
	rc    io.ReadCloser
	want  v1.Hash
	h     hash.Hash
	count func(int64)
}

func (d *digestReader) Read(p []byte) (int, error) {
	n, err := d.rc.Read(p)
	d.h.Write(p[:n])
	d.count(int64(n))
	switch {
	case err == io.EOF:
		if got := hex.EncodeToString(d.h.Sum(nil)); got != d.want.Hex {
			return n, errdefs.Errorf(errdefs.ErrInvalid, "layer %s is corrupt or truncated: its content has the digest sha256:%s", d.want, got)
		}
	case err != nil:
		err = fmt.Errorf("read layer %s: %w", d.want, err)
	}
	return n, err
}

func (d *digestReader) Close() error { return d.rc.Close() }
