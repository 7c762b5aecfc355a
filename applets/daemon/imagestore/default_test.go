package imagestore

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"banger/internal/api"
)

// hostParts returns the host's kernel and busybox, or skips the test
// naming the Debian packages that provide them.
func hostParts(t *testing.T) (kernel string) {
	t.Helper()
	kernel, err := HostKernel(DefaultBootDir)
	if err != nil {
		t.Skipf("no host kernel: %v", err)
	}
	if err := checkBusybox(DefaultBusybox); err != nil {
		t.Skipf("no static busybox: %v", err)
	}
	return kernel
}

// countingCopy is a PrepareKernel hook that counts its calls.
func countingCopy(n *atomic.Int32) func(ctx context.Context, src, dst string) error {
	return func(ctx context.Context, src, dst string) error {
		n.Add(1)
		_, err := copySparse(ctx, src, dst, 0o644)
		return err
	}
}

func TestEnsureTiny(t *testing.T) {
	kernel := hostParts(t)
	var builds atomic.Int32
	f := newFixture(t, Options{PrepareKernel: countingCopy(&builds)})
	ctx := context.Background()
	agent := os.Args[0] // a real Go binary, as the daemon passes its own

	start := time.Now()
	im, err := f.store.EnsureTiny(ctx, TinySpec{AgentBinary: agent})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("default image assembled in %v: %d MiB rootfs, %v", time.Since(start), im.RootfsMiB, im.Notes)
	if im.Name != api.TinyImage || im.Kernel.From.Path != kernel || im.Rootfs.From.Kind != OriginBusybox {
		t.Fatalf("manifest %+v", im.Manifest)
	}
	img := im.RootfsPath
	checkAgent(t, img, agent)
	if st := statIn(t, img, "/bin/busybox"); st.typ != "regular" || st.perm != 0o755 || st.uid != 0 {
		t.Fatalf("/bin/busybox: %+v", st)
	}
	for _, link := range []string{"/bin/sh", "/bin/ls", "/usr/bin/env"} {
		if out := debugfsOut(t, img, "stat "+link); !strings.Contains(out, `Fast link dest: "/bin/busybox"`) {
			t.Fatalf("%s is not a link to busybox:\n%s", link, out)
		}
	}
	if got := catIn(t, img, "/etc/os-release"); !strings.Contains(got, "ID=banger-tiny") {
		t.Fatalf("/etc/os-release = %q", got)
	}
	if got := catIn(t, img, "/etc/passwd"); !strings.HasPrefix(got, "root:x:0:0:root:/root:/bin/sh\n") {
		t.Fatalf("/etc/passwd = %q", got)
	}
	for _, p := range []string{"/etc/group", "/etc/hostname", "/etc/hosts"} {
		statIn(t, img, p)
	}
	for _, d := range []string{"/root", "/tmp", "/proc", "/sys", "/dev", "/run"} {
		if st := statIn(t, img, d); st.typ != "directory" || st.uid != 0 {
			t.Fatalf("%s: %+v", d, st)
		}
	}
	fsckClean(t, img)
	if err := f.store.Verify(ctx, api.TinyImage); err != nil {
		t.Fatal(err)
	}

	// Again: the same image, not a new build.
	start = time.Now()
	again, err := f.store.EnsureTiny(ctx, TinySpec{AgentBinary: agent})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("second call in %v", time.Since(start))
	if again.Digest != im.Digest || !again.Created.Equal(im.Created) || builds.Load() != 1 {
		t.Fatalf("second call rebuilt: %d builds, digest %s→%s", builds.Load(), im.Digest, again.Digest)
	}
}

func TestEnsureTinyConcurrent(t *testing.T) {
	hostParts(t)
	var builds atomic.Int32
	f := newFixture(t, Options{PrepareKernel: countingCopy(&builds)})
	ctx := context.Background()
	// A second store on the same directory stands for a second process.
	other, err := Open(ctx, f.store.Root(), Options{PrepareKernel: countingCopy(&builds)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	digests := make([]string, 4)
	errs := make([]error, 4)
	for i := range 4 {
		s := f.store
		if i%2 == 1 {
			s = other
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			im, err := s.EnsureTiny(ctx, TinySpec{AgentBinary: f.agent, SizeMiB: 128})
			digests[i], errs[i] = im.Digest, err
		}()
	}
	wg.Wait()
	for i := range 4 {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if digests[i] != digests[0] {
			t.Fatalf("callers got different images: %v", digests)
		}
	}
	if n := builds.Load(); n != 1 {
		t.Fatalf("%d builds for 4 concurrent callers; want 1", n)
	}
}

func TestEnsureTinyMissingParts(t *testing.T) {
	f := newFixture(t, Options{})
	ctx := context.Background()
	kernel := f.kernel

	_, err := f.store.EnsureTiny(ctx, TinySpec{Kernel: kernel, Busybox: filepath.Join(f.dir, "nobusybox"), AgentBinary: f.agent})
	wantCode(t, err, "unavailable")
	if !strings.Contains(err.Error(), "busybox-static") {
		t.Fatalf("error %q does not name busybox-static", err)
	}
	// A dynamically linked program stands for Debian's non-static busybox.
	if static, err := isStatic("/bin/ls"); err == nil && !static {
		_, err := f.store.EnsureTiny(ctx, TinySpec{Kernel: kernel, Busybox: "/bin/ls", AgentBinary: f.agent})
		wantCode(t, err, "unavailable")
		if !strings.Contains(err.Error(), "dynamically linked") {
			t.Fatalf("error %q does not say why", err)
		}
	}
	_, err = HostKernel(t.TempDir())
	wantCode(t, err, "unavailable")
	if !strings.Contains(err.Error(), "linux-image-amd64") {
		t.Fatalf("error %q does not name linux-image-amd64", err)
	}
	if list, _ := f.store.List(ctx); len(list) != 0 {
		t.Fatalf("failed calls left images: %+v", list)
	}
}

func TestHostKernelNewest(t *testing.T) {
	boot := t.TempDir()
	for _, v := range []string{"5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-56-cloud-amd64.old"} {
		os.WriteFile(filepath.Join(boot, "vmlinuz-"+v), nil, 0o644)
	}
	os.WriteFile(filepath.Join(boot, "initrd.img-9.9.9"), nil, 0o644)
	got, err := HostKernel(boot)
	if err != nil || filepath.Base(got) != "vmlinuz-6.1.0-56-cloud-amd64.old" {
		t.Fatalf("HostKernel = %s, %v", got, err)
	}
}

func TestVersionLess(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		less bool
	}{
		{"6.1.0-9", "6.1.0-10", true},
		{"6.1.0-10", "6.1.0-9", false},
		{"5.10", "6.1", true},
		{"6.1", "6.1.0", true},
		{"6.1.0", "6.1.0", false},
		{"6.01", "6.1", false},
		{"6.1-amd64", "6.1-cloud", true},
	} {
		if got := versionLess(tc.a, tc.b); got != tc.less {
			t.Errorf("versionLess(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
}
