package agent

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"banger/internal/session"
)

// guestFiles writes a passwd and a group file as an image has them.
func guestFiles(t *testing.T) (passwd, group string) {
	t.Helper()
	dir := t.TempDir()
	passwd, group = filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/sh\n"+
		"app:x:1000:1000:App:/home/app:/bin/sh\n"+
		"bad:x:notanumber:1::/:/bin/sh\n"+
		"nohome:x:1001:1001::relative:/nope\n"), 0o644)
	os.WriteFile(group, []byte("root:x:0:\napp:x:1000:\nstaff:x:50:app,other\ndocker:x:999:app\nwheel:x:10:root\n"), 0o644)
	return passwd, group
}

func TestLookupUser(t *testing.T) {
	passwd, group := guestFiles(t)
	for _, c := range []struct {
		spec string
		want guestUser
		err  string
	}{
		{spec: "app", want: guestUser{name: "app", uid: 1000, gid: 1000, groups: []uint32{1000, 50, 999}, home: "/home/app", shell: "/bin/sh"}},
		{spec: "1000", want: guestUser{name: "app", uid: 1000, gid: 1000, groups: []uint32{1000, 50, 999}, home: "/home/app", shell: "/bin/sh"}},
		{spec: "app:staff", want: guestUser{name: "app", uid: 1000, gid: 50, groups: []uint32{50, 999}, home: "/home/app", shell: "/bin/sh"}},
		{spec: "1000:7", want: guestUser{name: "app", uid: 1000, gid: 7, groups: []uint32{7, 50, 999}, home: "/home/app", shell: "/bin/sh"}},
		// A number the guest does not know: group 0, home /, as Docker.
		{spec: "4242", want: guestUser{name: "4242", uid: 4242, groups: []uint32{0}, home: "/", shell: fallbackShell}},
		{spec: "4242:4243", want: guestUser{name: "4242", uid: 4242, gid: 4243, groups: []uint32{4243}, home: "/", shell: fallbackShell}},
		{spec: "root:wheel", want: guestUser{name: "root", gid: 10, groups: []uint32{10}, home: "/root", shell: "/bin/sh"}},
		{spec: "nohome", want: guestUser{name: "nohome", uid: 1001, gid: 1001, groups: []uint32{1001}, home: "/", shell: fallbackShell}},
		{spec: "nobody", err: "not in the guest's"},
		{spec: "app:nogroup", err: `group "nogroup" is not in`},
		{spec: "app:", err: "is not USER[:GROUP]"},
		{spec: ":app", err: "is not USER[:GROUP]"},
		{spec: "a\nb", err: "is not USER[:GROUP]"},
	} {
		got, err := lookupUser(c.spec, passwd, group)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: %v; want an error with %q", c.spec, err, c.err)
			}
			continue
		}
		if err != nil || got.name != c.want.name || got.uid != c.want.uid || got.gid != c.want.gid || !slices.Equal(got.groups, c.want.groups) ||
			got.home != c.want.home || got.shell != c.want.shell {
			t.Errorf("%q: %+v, %v; want %+v", c.spec, got, err, c.want)
		}
	}
	// An image without a passwd file still runs root, and numbers.
	if u, err := lookupUser("5:6", filepath.Join(t.TempDir(), "none"), group); err != nil || u.uid != 5 || u.gid != 6 {
		t.Errorf("a number without a passwd file: %+v %v", u, err)
	}
}

// A session of another user runs with its credential, its environment
// and its home as the default directory; "~" is that home.
func TestNewExecSpecAsUser(t *testing.T) {
	passwd, group := guestFiles(t)
	d := execDefaults{shell: "/bin/ash", dir: "/", passwd: passwd, group: group}
	spec, err := newExecSpec(session.Exec{Shell: true, User: "app", Dir: "~/src"}, d)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"PATH=" + defaultPath, "HOME=/home/app", "USER=app", "LOGNAME=app", "SHELL=/bin/sh"}
	if spec.cred == nil || spec.cred.Uid != 1000 || spec.cred.Gid != 1000 || !slices.Equal(spec.cred.Groups, []uint32{1000, 50, 999}) ||
		!slices.Equal(spec.env, want) || spec.dir != "/home/app/src" || !slices.Equal(spec.argv, []string{"/bin/sh", "-l"}) {
		t.Errorf("as app: %+v (cred %+v)", spec, spec.cred)
	}
	// Root is the agent itself: no credential, as before users existed.
	spec, err = newExecSpec(session.Exec{Argv: []string{"id"}, User: "root", Dir: "~"}, d)
	if err != nil || spec.cred != nil || spec.dir != "/root" {
		t.Errorf("as root: %+v %v", spec, err)
	}
	if _, err := newExecSpec(session.Exec{Argv: []string{"id"}, User: "ghost"}, d); err == nil {
		t.Error("an unknown user was taken")
	}
}
