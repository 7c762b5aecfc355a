package imagestore

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"banger/internal/layout"
)

// The test binary runs itself as a child to import in another process,
// which the parent then kills, or runs as another user.
const (
	envChild  = "IMAGESTORE_TEST_CHILD" // the child's role
	envRoot   = "IMAGESTORE_TEST_ROOT"
	envSpec   = "IMAGESTORE_TEST_SPEC" // name|kernel|agent|rootfs dir|size MiB
	markBlock = "child: blocked in BuildInitrd"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(envChild); role != "" {
		os.Exit(runChild(role))
	}
	os.Exit(m.Run())
}

// runChild imports the image the environment describes, printing the
// store's stage log as JSON lines on stdout. Role "block" hangs in the
// BuildInitrd hook.
func runChild(role string) int {
	log := zerolog.New(os.Stdout).Level(zerolog.DebugLevel)
	ctx := log.WithContext(context.Background())
	var opts Options
	if role == "block" {
		opts.BuildInitrd = func(ctx context.Context, kernel, dst string) (bool, error) {
			os.WriteFile(dst, []byte("half an initrd"), 0o644)
			fmt.Println(markBlock)
			select {}
		}
	}
	s, err := Open(ctx, os.Getenv(envRoot), opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	f := strings.Split(os.Getenv(envSpec), "|")
	var size int
	fmt.Sscan(f[4], &size)
	_, err = s.Import(ctx, ImportSpec{Name: f[0], KernelPath: f[1], AgentBinary: f[2], RootfsDir: f[3], SizeMiB: size})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// childCmd is the test binary run as a child importing spec into root.
func childCmd(t *testing.T, bin, role, root string, spec ImportSpec) *exec.Cmd {
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"="+role, envRoot+"="+root,
		envSpec+"="+strings.Join([]string{spec.Name, spec.KernelPath, spec.AgentBinary, spec.RootfsDir, fmt.Sprint(spec.SizeMiB)}, "|"))
	return cmd
}

// killAt runs an import in a child and SIGKILLs it as soon as it prints
// a line containing mark. It fails the test if the child ends first.
func killAt(t *testing.T, cmd *exec.Cmd, mark string) {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	seen := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), mark) {
				cmd.Process.Signal(syscall.SIGKILL)
				seen <- true
				break
			}
		}
		io.Copy(io.Discard, out)
		seen <- false
	}()
	select {
	case ok := <-seen:
		cmd.Wait()
		if !ok {
			t.Fatalf("the child ended before %q: %s", mark, stderr.String())
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("no %q from the child in 60 s", mark)
	}
}

// TestCrashDuringImport kills an import at several points, as kill -9 or
// a power cut would, and checks that reopening the store shows no half
// image and leaves no temporary files.
func TestCrashDuringImport(t *testing.T) {
	f := newFixture(t, Options{})
	src := filepath.Join(f.dir, "tree")
	makeTree(t, src)
	for i := range 300 { // enough files that the rootfs stage takes a while
		writeRandom(t, filepath.Join(src, "usr", fmt.Sprintf("f%03d", i)), 8<<10)
	}
	root := f.store.Root()
	for _, tc := range []struct{ name, role, mark string }{
		{"in a blocked hook", "block", markBlock},
		{"building the rootfs", "import", `"stage":"agent"`}, // logged as rootfs starts
		{"hashing the parts", "import", `"stage":"rootfs"`},  // logged as the digest starts
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := ImportSpec{Name: "crashy", KernelPath: f.kernel, AgentBinary: f.agent, RootfsDir: src}
			killAt(t, childCmd(t, os.Args[0], tc.role, root, spec), tc.mark)

			if left := tmpEntries(t, f.store); len(left) == 0 {
				t.Fatal("the killed import left nothing in the temporary directory; was it killed in the middle?")
			}
			s, err := Open(context.Background(), root, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if left := tmpEntries(t, s); len(left) != 0 {
				t.Fatalf("Open left temporary files: %v", left)
			}
			list, err := s.List(context.Background())
			if err != nil || len(list) != 0 {
				t.Fatalf("List after a crash: %+v, %v", list, err)
			}
			// The name is free again: the dead import's lock went with it.
			spec.SizeMiB = 64
			if _, err := s.Import(context.Background(), spec); err != nil {
				t.Fatal(err)
			}
			if err := s.Delete(context.Background(), "crashy", nil); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestOpenKeepsLiveBuild checks that opening a store while another
// process imports into it does not remove that import's files.
func TestOpenKeepsLiveBuild(t *testing.T) {
	f := newFixture(t, Options{})
	src := filepath.Join(f.dir, "tree")
	os.MkdirAll(src, 0o755)
	root := f.store.Root()
	cmd := childCmd(t, os.Args[0], "block", root, ImportSpec{Name: "live", KernelPath: f.kernel, AgentBinary: f.agent, RootfsDir: src, SizeMiB: 64})
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	sc := bufio.NewScanner(out)
	for sc.Scan() && !strings.Contains(sc.Text(), markBlock) {
	}
	before := tmpEntries(t, f.store)
	if _, err := Open(context.Background(), root, Options{}); err != nil {
		t.Fatal(err)
	}
	if after := tmpEntries(t, f.store); len(before) == 0 || len(after) != len(before) {
		t.Fatalf("temporary files of a live import: %v before Open, %v after", before, after)
	}
}

// TestImportUnprivileged imports as a user that is not root, as the
// daemon runs: files that user owns become root's in the image, other
// owners are kept, and the mount points and agent are root's.
func TestImportUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as another user")
	}
	const nobody = 65534
	f := newFixture(t, Options{})
	// Everything the child touches must be reachable by it.
	work, err := os.MkdirTemp("", "imagestore-unpriv-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	os.Chmod(work, 0o755)
	bin := filepath.Join(work, "imagestore.test")
	if _, err := copySparse(context.Background(), os.Args[0], bin, 0o755); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(work, "tree")
	for _, d := range []string{"etc", "srv/data"} {
		os.MkdirAll(filepath.Join(src, d), 0o755)
	}
	os.WriteFile(filepath.Join(src, "etc/motd"), []byte("hi"), 0o640)
	os.WriteFile(filepath.Join(src, "srv/data/blob"), []byte("data"), 0o600)
	filepath.Walk(src, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, nobody, nobody) })
	os.Chown(filepath.Join(src, "srv/data/blob"), 1234, nobody)
	os.Chmod(filepath.Join(src, "srv/data/blob"), 0o644) // readable by the child
	root := filepath.Join(work, "images")
	os.Mkdir(root, 0o700)
	os.Chown(root, nobody, nobody)
	for _, p := range []string{f.kernel, f.agent} {
		os.Chmod(p, 0o644)
	}
	kernel := filepath.Join(work, "vmlinuz")
	agent := filepath.Join(work, "banger")
	copySparse(context.Background(), f.kernel, kernel, 0o644)
	copySparse(context.Background(), f.agent, agent, 0o755)

	cmd := childCmd(t, bin, "import", root, ImportSpec{Name: "mine", KernelPath: kernel, AgentBinary: agent, RootfsDir: src, SizeMiB: 64})
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	cmd.Dir = work
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("import as nobody: %v\n%s", err, out)
	}
	img := filepath.Join(root, "mine", layout.ImageRootfs)
	if fi, err := os.Stat(img); err != nil || fi.Sys().(*syscall.Stat_t).Uid != nobody {
		t.Fatalf("image file: %v", err)
	}
	checkAgent(t, img, agent)
	for p, want := range map[string]inodeStat{
		"/":              {typ: "directory", perm: 0o755},
		"/etc":           {typ: "directory", perm: 0o755},
		"/etc/motd":      {typ: "regular", perm: 0o640, size: 2},
		"/srv/data/blob": {typ: "regular", perm: 0o644, uid: 1234, size: 4},
		"/tmp":           {typ: "directory", perm: 0o1777},
		"/root":          {typ: "directory", perm: 0o700},
		"/sbin":          {typ: "directory", perm: 0o755},
	} {
		got := statIn(t, img, p)
		if want.size == 0 {
			got.size = 0
		}
		if got != want {
			t.Errorf("%s in the image: %+v; want %+v", p, got, want)
		}
	}
	fsckClean(t, img)
}
