package e2e_test

// The user-mode network (issue 13): how fast a guest downloads through
// the daemon's user-space stack, beside the host downloading the same
// file from the same server in the same iteration, and what a running
// user-mode VM costs the daemon in memory.
//
//	go test -run '^$' -bench UserNet -benchtime 5x ./e2e/

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

func BenchmarkUserNetDownload(b *testing.B) {
	const size = 64 << 20
	v := newVMBench(b)
	blob := bytes.Repeat([]byte("banger"), size/6)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		w.Write(blob)
	}))
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	before := procStatusMiB(b, v.pid)["VmRSS"]
	v.create("dl", "--allow-host", port)
	time.Sleep(2 * time.Second)
	idle := procStatusMiB(b, v.pid)["VmRSS"]

	var guest, host []time.Duration
	for b.Loop() {
		start := time.Now()
		v.mustRun("vm", "exec", "dl", "--", "wget", "-q", "-O", "/dev/null", "http://10.0.2.2:"+port+"/")
		guest = append(guest, time.Since(start))
		start = time.Now()
		if out, err := exec.Command("busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:"+port+"/").CombinedOutput(); err != nil {
			b.Fatalf("host wget: %v: %s", err, out)
		}
		host = append(host, time.Since(start))
	}
	after := procStatusMiB(b, v.pid)
	mibps := func(d float64) float64 { return float64(size) / (1 << 20) / (d / 1e9) }
	g, h := median(guest), median(host)
	b.ReportMetric(mibps(g), "guest-MiB/s")
	b.ReportMetric(mibps(h), "host-MiB/s")
	b.ReportMetric(g/h, "guest/host")
	b.ReportMetric(idle-before, "vm-daemon-MiB")
	b.ReportMetric(after["VmRSS"]-before, "vm-after-downloads-daemon-MiB")
	b.Log(fmt.Sprintf("daemon RSS: %.1f MiB before the VM, %.1f with it idle, %.1f after the downloads", before, idle, after["VmRSS"]))
}
