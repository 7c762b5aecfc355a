package imagestore

import (
	"path/filepath"
	"strings"
	"testing"
)

// An attribute of an entry reached through a symlink whose target has a
// newline is left out: its path on a debugfs command line would end at
// the newline, and the rest of the line be a command of the archive's
// (dump, which writes to the host).
func TestXattrThroughANewlineIsLeftOut(t *testing.T) {
	st, err := newStager(filepath.Join(t.TempDir(), "root"))
	if err != nil {
		t.Fatal(err)
	}
	evil := "x\ndump /etc/hostname /tmp/victim\ny"
	if err := st.mkdir(evil, attr{perm: 0o755}); err != nil {
		t.Fatal(err)
	}
	if err := st.symlink("d", evil, attr{perm: 0o777}); err != nil {
		t.Fatal(err)
	}
	if err := st.keepXattrs("d/f", false, map[string]string{"SCHILY.xattr.user.note": "hi"}); err != nil {
		t.Fatal(err)
	}
	for p := range st.xattrs {
		t.Errorf("an attribute kept for %q", p)
	}
	if notes := strings.Join(st.skipNotes(), "\n"); !strings.Contains(notes, "debugfs cannot name") {
		t.Errorf("notes %q", notes)
	}
}
