package agent

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"banger/internal/agentlink"
)

const procNetTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1060 1 0000000038459be5 100 0 0 10 0
   1: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1061 1 0000000038459be5 100 0 0 10 0
   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1062 1 0000000038459be5 100 0 0 10 0
   3: 020200C0:D896 507100CB:01BB 01 00000000:00000000 03:00000ACA 00000000     0        0 0 3 000000000a0b8b16
`

const procNetTCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 100 0 0 10 0
   2: 00000000000000000000000001000000:1F91 00000000000000000000000001000000:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 100 0 0 10 0
`

func fakeProc(t *testing.T, tcp, tcp6 string) string {
	t.Helper()
	proc := t.TempDir()
	os.Mkdir(filepath.Join(proc, "net"), 0o755)
	os.WriteFile(filepath.Join(proc, "net", "tcp"), []byte(tcp), 0o644)
	if tcp6 != "" {
		os.WriteFile(filepath.Join(proc, "net", "tcp6"), []byte(tcp6), 0o644)
	}
	return proc
}

func TestListeningPorts(t *testing.T) {
	got, err := listeningPorts(fakeProc(t, procNetTCP, procNetTCP6))
	if err != nil {
		t.Fatal(err)
	}
	want := []agentlink.Port{
		{Proto: "tcp6", Address: "::", Port: 22},
		{Proto: "tcp", Address: "127.0.0.1", Port: 53},
		{Proto: "tcp", Address: "0.0.0.0", Port: 8080},
		{Proto: "tcp6", Address: "::1", Port: 8080},
	}
	if !slices.Equal(got, want) {
		t.Errorf("ports\n%+v\nwant\n%+v", got, want)
	}

	// Without IPv6 there is no tcp6 file.
	got, err = listeningPorts(fakeProc(t, procNetTCP, ""))
	if err != nil || len(got) != 2 {
		t.Errorf("without tcp6: %+v, %v", got, err)
	}
	if _, err := listeningPorts(fakeProc(t, "header\n   0: garbage\n", "")); err == nil {
		t.Error("a garbled /proc/net/tcp gave no error")
	}
	if _, err := listeningPorts("/proc"); err != nil {
		t.Errorf("this machine's ports: %v", err)
	}
}
