package e2e_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/applets/daemon/imagestore"
	"banger/internal/api"
)

// needMmdebstrap skips a benchmark of the Debian default image where it
// cannot be built.
func needMmdebstrap(b *testing.B) {
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		b.Skip("mmdebstrap is not installed (packaging/test.sh installs it)")
	}
}

// BenchmarkDefaultImageBuild measures, interleaved, the default image's
// build on first use (a `vm create --no-start` of a store without it:
// download, mmdebstrap, the ext4 root, the agent) and mmdebstrap alone
// making the same package set into a tar file: what banger adds to the
// Debian tool it drives. Each round deletes the image (untimed).
func BenchmarkDefaultImageBuild(b *testing.B) {
	needMmdebstrap(b)
	v := newVMBench(b)
	args := []string{"--variant=apt", "--format=tar", "--include=" + strings.Join(imagestore.DefaultPackages, ","), imagestore.DefaultSuite}
	var build, alone []time.Duration
	i := 0
	for b.Loop() {
		name := "b" + strconv.Itoa(i)
		start := time.Now()
		v.mustRun("vm", "create", "--name", name, "--no-start", "--image", api.DefaultImage)
		build = append(build, time.Since(start))
		v.mustRun("vm", "delete", name)
		v.mustRun("image", "delete", api.DefaultImage)

		tar := filepath.Join(v.dir, "alone.tar")
		cmd := exec.Command("mmdebstrap", append(args, tar)...)
		cmd.Env = append(os.Environ(), "TMPDIR="+v.dir)
		start = time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("mmdebstrap: %v: %s", err, out)
		}
		alone = append(alone, time.Since(start))
		os.Remove(tar)
		b.Logf("round %d: banger build %.1f s, mmdebstrap alone %.1f s", i, ms(build[i])/1000, ms(alone[i])/1000)
		i++
	}
	b.ReportMetric(medianMS(build)/1000, "build-p50-s")
	b.ReportMetric(medianMS(alone)/1000, "mmdebstrap-p50-s")
	b.ReportMetric(medianMS(build)/medianMS(alone), "build/mmdebstrap")
}

// BenchmarkDefaultVsTiny measures, interleaved, `vm run --rm -- true` on
// the Debian default image and on tiny, warm (a standby taken) and cold
// (--cold: a boot), as ratios default/tiny. Both images and their warm
// snapshots are made before the timing.
func BenchmarkDefaultVsTiny(b *testing.B) {
	needMmdebstrap(b)
	v := newVMBenchWith(b, []string{"BANGER_AUTO_WARM=true"}, nil)
	for _, img := range []string{api.DefaultImage, api.TinyImage} {
		v.mustRun("vm", "run", "--rm", "--image", img, "--", "true")
	}
	kinds := []string{"default-warm", "tiny-warm", "default-cold", "tiny-cold"}
	times := map[string][]time.Duration{}
	i := 0
	for b.Loop() {
		for k := range kinds {
			kind := kinds[(i+k)%len(kinds)]
			img, mode, _ := strings.Cut(kind, "-")
			args := []string{"vm", "run", "--rm", "-q", "--image", img}
			if mode == "cold" {
				args = append(args, "--cold")
			} else {
				// The standby the last run of this image left is ready.
				v.waitStandby(img)
			}
			start := time.Now()
			v.mustRun(append(args, "--", "true")...)
			times[kind] = append(times[kind], time.Since(start))
		}
		i++
	}
	for _, kind := range kinds {
		b.ReportMetric(medianMS(times[kind]), kind+"-p50-ms")
	}
	b.ReportMetric(medianMS(times["default-warm"])/medianMS(times["tiny-warm"]), "default/tiny-warm")
	b.ReportMetric(medianMS(times["default-cold"])/medianMS(times["tiny-cold"]), "default/tiny-cold")
}

// waitStandby waits until image has a ready standby.
func (v *vmBench) waitStandby(image string) {
	v.b.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var im api.Image
		if err := json.Unmarshal([]byte(v.mustRun("image", "show", "--json", image)), &im); err != nil {
			v.b.Fatal(err)
		}
		if im.Standby != nil && im.Standby.Ready > 0 {
			return
		}
		if time.Now().After(deadline) {
			v.b.Fatalf("no standby of %s: %+v", image, im.Standby)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
