package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/agentlink"
	"banger/internal/session"
	ut "banger/internal/untar/untartest"
)

func TestUntarSession(t *testing.T) {
	a := newTestAgent(t)
	dir := filepath.Join(t.TempDir(), "ws")
	untar := func(data []byte) (session.ExitStatus, error) {
		s, err := a.open(agentlink.MethodUntar, session.Untar{Dir: dir})
		if err != nil {
			return session.ExitStatus{}, err
		}
		return session.Run(s, session.Stdio{Stdin: bytes.NewReader(data)})
	}
	big := strings.Repeat("0123456789abcdef", 300<<10/16)
	st, err := untar(ut.Archive(t, ut.File("a/b", "bee"), ut.File("big", big)))
	if err != nil || st != (session.ExitStatus{}) {
		t.Fatalf("untar: %+v, %v", st, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "big")); string(b) != big {
		t.Errorf("big: %d bytes", len(b))
	}
	st, err = untar(ut.Archive(t, ut.File("../x", "out")))
	if err != nil || st.Code != 1 || !strings.Contains(st.Error, `unpack "../x": names with .. are refused`) {
		t.Errorf("hostile untar: %+v, %v", st, err)
	}
	st, err = untar([]byte("this is no tar stream"))
	if err != nil || st.Code != 1 || !strings.Contains(st.Error, "read the tar stream") {
		t.Errorf("bad untar: %+v, %v", st, err)
	}
}
