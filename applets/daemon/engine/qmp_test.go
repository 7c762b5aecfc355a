package engine

import (
	"encoding/json"
	"net"
	"path/filepath"
	"testing"

	"github.com/digitalocean/go-qemu/qmp"
)

// A QMP answer that is not the command's (one QEMU gives a new client for
// a command it finished after its own client left) is never taken for
// it: not before the greeting, not as the capabilities' return, not as a
// command's.
func TestQMPSkipsStrayAnswers(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		stray := `{"return": {}}` + "\r\n"
		c.Write([]byte(stray + `{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": ["oob"]}}` + "\r\n"))
		in := json.NewDecoder(c) // commands come unframed, as QEMU reads them
		for {
			var cmd struct {
				Execute string          `json:"execute"`
				ID      json.RawMessage `json:"id"`
			}
			if in.Decode(&cmd) != nil {
				return
			}
			answer := `{}`
			if cmd.Execute == "query-status" {
				answer = `{"status": "running", "running": true}`
			}
			c.Write([]byte(stray + `{"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 2}}` + "\r\n" +
				`{"return": ` + answer + `, "id": ` + string(cmd.ID) + "}\r\n"))
		}
	}()
	var st Status
	err = withQMP(sock, func(run qmpRunner) error {
		raw, err := run(qmp.Command{Execute: "query-status"})
		if err != nil {
			return err
		}
		return json.Unmarshal(raw, &st)
	})
	if err != nil || st.Status != "running" {
		t.Fatalf("query-status: %+v, %v", st, err)
	}
}
