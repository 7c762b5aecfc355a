package e2e_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"banger/internal/api"
)

// envBenchKernel names the directory of a kernel `banger kernel build`
// made (STATE/kernels/NAME): BenchmarkStarts boots it as the default
// image's kernel. The build takes 15 to 30 minutes here, too long to make
// inside a benchmark.
const envBenchKernel = "BANGER_BENCH_KERNEL"

// BenchmarkStarts measures, side by side and interleaved, the three ways
// `banger vm run -- true` starts a guest — Debian's kernel booted, the
// built kernel booted, the built kernel's warm snapshot restored — and
// the same two starts of bare QEMU with no banger in the way (the
// engine's recorded argv: a boot to the agent's Hello, and a restore of
// the same snapshot to the Hello). Each run's VM is deleted untimed.
func BenchmarkStarts(b *testing.B) {
	v := newBuiltKernelBench(b)
	// Debian's kernel with the same busybox root: an image of its own.
	root := filepath.Join(v.dir, "debian-root")
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	if err := exec.Command("cp", "/bin/busybox", filepath.Join(root, "bin", "true")).Run(); err != nil {
		b.Fatal(err)
	}
	kernels := []string{hostKernel(b)}
	v.mustRun("image", "import", "--kernel", kernels[len(kernels)-1], "--rootfs-dir", root, "debian")
	// Snapshots: the first run of each image saves one; cold runs then
	// use --cold.
	v.mustRun("vm", "run", "--rm", "--", "true")
	v.mustRun("vm", "run", "--rm", "--image", "debian", "--", "true")
	bare := newBareQEMU(v)
	restore := newBareRestore(v)

	kinds := []string{"debian-cold", "built-cold", "warm", "bare-boot", "bare-restore"}
	times := map[string][]time.Duration{}
	i := 0
	for b.Loop() {
		for k := range kinds {
			kind := kinds[(i+k)%len(kinds)]
			name := "s" + strconv.Itoa(i) + "-" + strconv.Itoa(k)
			var d time.Duration
			switch kind {
			case "debian-cold", "built-cold", "warm":
				args := []string{"vm", "run", "--name", name, "-q"}
				if kind == "debian-cold" {
					args = append(args, "--image", "debian")
				}
				if kind != "warm" {
					args = append(args, "--cold")
				}
				start := time.Now()
				v.mustRun(append(args, "--", "true")...)
				d = time.Since(start)
				if st := v.createStages(name); (st["restore"] > 0) != (kind == "warm") {
					b.Fatalf("%s: stages %v", kind, st)
				}
				v.mustRun("vm", "delete", name)
			case "bare-boot", "bare-restore":
				dir := filepath.Join(v.dir, name)
				if err := os.Mkdir(dir, 0o700); err != nil {
					b.Fatal(err)
				}
				if kind == "bare-boot" {
					_, d = bare.boot(b, dir)
				} else {
					d = restore.restore(b, dir)
				}
				os.RemoveAll(dir)
			}
			times[kind] = append(times[kind], d)
		}
		i++
	}
	for _, kind := range kinds {
		b.ReportMetric(medianMS(times[kind]), kind+"-p50-ms")
	}
	b.ReportMetric(medianMS(times["warm"])/medianMS(times["bare-restore"]), "warm/bare-restore")
	b.ReportMetric(medianMS(times["built-cold"])/medianMS(times["bare-boot"]), "built-cold/bare-boot")
	for j := range len(times["warm"]) {
		var parts []string
		for _, kind := range kinds {
			if j < len(times[kind]) {
				parts = append(parts, kind+" "+strconv.FormatFloat(ms(times[kind][j]), 'f', 0, 64)+" ms")
			}
		}
		b.Logf("round %d: %s", j, strings.Join(parts, ", "))
	}
}

// newBuiltKernelBench starts a benchmark daemon whose default image has
// the built kernel of envBenchKernel, and saves warm snapshots.
func newBuiltKernelBench(b *testing.B) *vmBench {
	kdir := os.Getenv(envBenchKernel)
	if kdir == "" {
		b.Skipf("set %s to a built kernel's directory (STATE/kernels/NAME after `banger kernel build`)", envBenchKernel)
	}
	if _, err := os.Stat(filepath.Join(kdir, "vmlinux")); err != nil {
		b.Fatalf("%s: %v", envBenchKernel, err)
	}
	return newVMBenchWith(b, []string{"BANGER_AUTO_WARM=true"}, func(state string) {
		dst := filepath.Join(state, "kernels", "default")
		os.MkdirAll(filepath.Dir(dst), 0o700)
		if err := exec.Command("cp", "-a", kdir, dst).Run(); err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkBackToBack is issue 6's acceptance sequence: `vm run -- true`
// twice back to back on an image that has no snapshot yet (the built
// kernel's), the first booting and saving one. It reports both runs; the
// second is the warm figure. Each round imports the image anew (untimed),
// so it starts with no snapshot and no standby.
func BenchmarkBackToBack(b *testing.B) {
	v := newBuiltKernelBench(b)
	rootfs := filepath.Join(v.state, "images", api.TinyImage, "rootfs.ext4")
	var first, second []time.Duration
	i := 0
	for b.Loop() {
		img := "b2b" + strconv.Itoa(i)
		v.mustRun("image", "import", "--kernel-name", "default", "--rootfs-ext4", rootfs, img)
		var d [2]time.Duration
		for k := range d {
			start := time.Now()
			v.mustRun("vm", "run", "--name", img+"-"+strconv.Itoa(k), "--image", img, "-q", "--", "true")
			d[k] = time.Since(start)
		}
		if st := v.createStages(img + "-1"); st["restore"] == 0 {
			b.Fatalf("the second run was not warm: stages %v", st)
		}
		for k := range d {
			v.mustRun("vm", "delete", img+"-"+strconv.Itoa(k))
		}
		v.mustRun("image", "delete", img)
		first, second = append(first, d[0]), append(second, d[1])
		b.Logf("round %d: first %.0f ms, second %.0f ms", i, ms(d[0]), ms(d[1]))
		i++
	}
	b.ReportMetric(medianMS(first), "first-p50-ms")
	b.ReportMetric(medianMS(second), "second-p50-ms")
}

// bareRestore restores, with no banger in the way, the default image's
// warm snapshot: the argv the engine recorded for a restored VM (which
// loads the state as QEMU starts, -incoming exec:cat), a copy of its
// disk, QMP cont once loaded (it was saved paused), until the agent's
// Hello.
type bareRestore struct {
	argv   []string
	refDir string
	memory string
	disk   string
}

func newBareRestore(v *vmBench) *bareRestore {
	v.b.Helper()
	v.mustRun("vm", "create", "--name", "ref-warm")
	if st := v.createStages("ref-warm"); st["restore"] == 0 {
		v.b.Fatalf("ref-warm was not restored: %v", st)
	}
	var vm api.VM
	if err := json.Unmarshal([]byte(v.mustRun("vm", "show", "--json", "ref-warm")), &vm); err != nil {
		v.b.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(vm.InstanceDir, "engine.argv"))
	if err != nil {
		v.b.Fatal(err)
	}
	snap := filepath.Join(v.state, "snapshots", api.TinyImage)
	r := &bareRestore{refDir: vm.InstanceDir, memory: filepath.Join(snap, "memory"), disk: filepath.Join(snap, "disk.qcow2")}
	if err := json.Unmarshal(raw, &r.argv); err != nil {
		v.b.Fatal(err)
	}
	v.mustRun("vm", "delete", "ref-warm")
	// A VM that took a standby runs with the standby's paths: the
	// directory to replace is the one its argv names.
	for _, a := range r.argv {
		if _, p, ok := strings.Cut(a, "path="); ok && strings.Contains(p, "/console.log") {
			r.refDir = filepath.Dir(strings.Split(p, ",")[0])
		}
	}
	// The recorded state is the VM's link to the snapshot's memory,
	// gone once loaded, or "defer" (a standby, given its state later,
	// its memory allocated first): load the snapshot's own as QEMU
	// starts, as a restore without a standby does.
	i := slices.Index(r.argv, "-incoming")
	if i < 0 || !strings.HasPrefix(r.argv[i+1], "exec:cat ") && r.argv[i+1] != "defer" {
		v.b.Fatalf("the recorded argv of a restored VM loads no state: %q", r.argv)
	}
	r.argv[i+1] = "exec:cat '" + r.memory + "'"
	r.argv = slices.DeleteFunc(r.argv, func(a string) bool { return a == "-mem-prealloc" })
	return r
}

func (r *bareRestore) restore(b *testing.B, dir string) time.Duration {
	b.Helper()
	start := time.Now()
	// The disk copy is part of a restore's cost, as in banger's.
	if err := exec.Command("cp", r.disk, filepath.Join(dir, "disk.qcow2")).Run(); err != nil {
		b.Fatal(err)
	}
	ctx, stop := startBareQEMU(b, r.argv, r.refDir, dir)
	defer stop()
	if err := qmpContWhenLoaded(ctx, filepath.Join(dir, "qmp.sock")); err != nil {
		qlog, _ := os.ReadFile(filepath.Join(dir, "qemu.log"))
		b.Fatalf("bare restore: %v\nqemu.log: %s", err, qlog)
	}
	if err := waitHello(ctx, filepath.Join(dir, "agent.sock")); err != nil {
		b.Fatalf("bare restore: %v", err)
	}
	return time.Since(start)
}

// qmpContWhenLoaded polls the run state on one QMP session until the
// incoming state is loaded (paused), then continues the guest.
func qmpContWhenLoaded(ctx context.Context, socket string) error {
	mon, err := qmp.NewSocketMonitor("unix", socket, 5*time.Second)
	if err != nil {
		return err
	}
	if err := mon.Connect(); err != nil {
		return err
	}
	defer mon.Disconnect()
	for ctx.Err() == nil {
		raw, err := mon.Run([]byte(`{"execute":"query-status"}`))
		if err != nil {
			return err
		}
		var st struct {
			Return struct {
				Status string `json:"status"`
			} `json:"return"`
		}
		json.Unmarshal(raw, &st)
		switch st.Return.Status {
		case "paused":
			_, err := mon.Run([]byte(`{"execute":"cont"}`))
			return err
		case "running":
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return ctx.Err()
}
