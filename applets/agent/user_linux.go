package agent

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"banger/rpc"
)

const groupFile = "/etc/group"

// guestUser is who a session runs as, from the guest's own files.
type guestUser struct {
	name   string
	uid    uint32
	gid    uint32
	groups []uint32 // supplementary, the primary first
	home   string
	shell  string
}

// rootUser is root, whatever the guest's files say (an image may have
// none).
var rootUser = guestUser{name: "root", home: rootHome}

// isRoot says whether a session's USER[:GROUP] is plain root, which
// needs no lookup (an image may have no /etc/passwd).
func isRoot(spec string) bool { return spec == "" || spec == "root" || spec == "0" }

// lookupUser resolves USER[:GROUP] as Docker does: names from the
// guest's passwd and group files, numbers as they are; a number not in
// passwd has group 0, its own home "/", unless a group is given.
func lookupUser(spec, passwd, group string) (guestUser, error) {
	name, grp, hasGroup := strings.Cut(spec, ":")
	if name == "" || hasGroup && grp == "" || strings.ContainsAny(spec, "\x00\n") {
		return guestUser{}, fmt.Errorf("user %q is not USER[:GROUP]", spec)
	}
	u := guestUser{name: name, home: "/", shell: fallbackShell}
	if isRoot(name) {
		u = rootUser // with a group
		u.shell = loginShell(passwd)
	}
	found := false
	err := eachLine(passwd, func(f []string) bool {
		if len(f) != 7 || f[0] != name && f[2] != name {
			return false
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			return false
		}
		u.name, u.uid, u.gid, found = f[0], uint32(uid), uint32(gid), true
		if filepath.IsAbs(f[5]) {
			u.home = f[5]
		}
		if filepath.IsAbs(f[6]) && checkExecutable(f[6]) == nil {
			u.shell = f[6]
		}
		return true
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return guestUser{}, err
	}
	if !found {
		uid, err := strconv.ParseUint(name, 10, 32)
		if err != nil && !isRoot(name) {
			return guestUser{}, fmt.Errorf("user %q is not in the guest's %s; give a name it has, or a number", name, passwd)
		}
		u.uid = uint32(uid)
	}
	if hasGroup {
		gid, ok := lookupGroup(grp, group)
		if !ok {
			return guestUser{}, fmt.Errorf("group %q is not in the guest's %s; give a name it has, or a number", grp, group)
		}
		u.gid = gid
	}
	// The primary group is a supplementary one too, as login's
	// initgroups makes it.
	u.groups = []uint32{u.gid}
	if found {
		u.groups = append(u.groups, memberOf(u.name, u.gid, group)...)
	}
	return u, nil
}

// lookupGroup is a group's id, by name in the group file, or as a number.
func lookupGroup(name, group string) (uint32, bool) {
	var gid uint32
	ok := false
	eachLine(group, func(f []string) bool {
		if len(f) == 4 && f[0] == name {
			if n, err := strconv.ParseUint(f[2], 10, 32); err == nil {
				gid, ok = uint32(n), true
				return true
			}
		}
		return false
	})
	if !ok {
		if n, err := strconv.ParseUint(name, 10, 32); err == nil {
			return uint32(n), true
		}
	}
	return gid, ok
}

// memberOf lists the groups the group file names user a member of,
// besides gid.
func memberOf(user string, gid uint32, group string) []uint32 {
	var out []uint32
	eachLine(group, func(f []string) bool {
		if len(f) != 4 {
			return false
		}
		n, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil || uint32(n) == gid {
			return false
		}
		for _, m := range strings.Split(f[3], ",") {
			if m == user {
				out = append(out, uint32(n))
				break
			}
		}
		return false
	})
	return out
}

// eachLine calls fn with the colon-separated fields of each line of file
// until it returns true.
func eachLine(file string, fn func(fields []string) bool) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fn(strings.Split(sc.Text(), ":")) {
			return nil
		}
	}
	return sc.Err()
}

// credential is what a process of u runs with; nil for root, as the
// agent itself runs.
func (u guestUser) credential() *syscall.Credential {
	if u.uid == 0 && u.gid == 0 && len(u.groups) <= 1 {
		return nil
	}
	return &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: u.groups}
}

// inHome resolves "~" and "~/PATH" against the user's home; other paths
// are returned as they are.
func (u guestUser) inHome(p string) string {
	if p == "~" {
		return u.home
	}
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		return filepath.Join(u.home, rest)
	}
	return p
}

// sessionPath is the user a copy session names and its path, resolved in
// that user's home when it is "~/PATH", absolute and cleaned; what is
// wrong with either is invalid_params.
func sessionPath(user, p string) (guestUser, string, error) {
	u := rootUser
	if !isRoot(user) {
		var err error
		if u, err = lookupUser(user, passwdFile, groupFile); err != nil {
			return u, "", rpc.Errorf(rpc.CodeInvalidParams, "%v", err)
		}
	}
	abs := u.inHome(p)
	if !filepath.IsAbs(abs) || strings.IndexByte(abs, 0) >= 0 {
		return u, "", rpc.Errorf(rpc.CodeInvalidParams, "path %q is not absolute", p)
	}
	return u, filepath.Clean(abs), nil
}
