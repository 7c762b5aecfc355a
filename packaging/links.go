// Package packaging installs banger on a host: the applet links beside the
// one binary, and the system install (the binary, install.toml, the
// systemd units and the sudoers rule, rendered from the templates beside
// it) under a root directory; the .deb recipe (nfpm.yaml, deb.sh) sits
// beside it too. It works on paths and values given to it and knows
// nothing of the CLI.
package packaging

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Link states reported by CheckLinks.
const (
	LinkOK      = "ok"      // the link (or the binary itself) is this binary
	LinkMissing = "missing" // nothing at the path
	LinkForeign = "foreign" // something else is at the path
)

// LinkStatus is one applet's link.
type LinkStatus struct {
	Applet string `json:"applet"`
	Path   string `json:"path"`
	Target string `json:"target,omitempty"` // what the link points at, as written
	State  string `json:"state"`
	Detail string `json:"detail,omitempty"`
}

// InstallLinks makes dir/NAME a symlink to binary for each name. A link
// beside the binary is relative (the pair can move together); elsewhere it
// is absolute. An existing link to another file is replaced atomically; a
// regular file is never replaced, unless it is the binary itself.
func InstallLinks(dir, binary string, names []string) error {
	binary, err := filepath.Abs(binary)
	if err != nil {
		return err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return err
	}
	target := binary
	if filepath.Dir(binary) == dir {
		target = filepath.Base(binary)
	}
	for _, name := range names {
		path := filepath.Join(dir, name)
		st := checkLink(path, name, binary)
		switch {
		case st.State == LinkOK:
			continue
		case st.State == LinkForeign && st.Target == "":
			return fmt.Errorf("%s exists and is not a link (%s); remove it first", path, st.Detail)
		}
		tmp := filepath.Join(dir, "."+name+".banger-link")
		os.Remove(tmp)
		if err := os.Symlink(target, tmp); err != nil {
			return fmt.Errorf("link %s: %w", path, err)
		}
		if err := os.Rename(tmp, path); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("link %s: %w", path, err)
		}
	}
	return nil
}

// CheckLinks reports, for each name, whether dir/NAME runs binary.
func CheckLinks(dir, binary string, names []string) ([]LinkStatus, error) {
	binary, err := filepath.Abs(binary)
	if err != nil {
		return nil, err
	}
	out := make([]LinkStatus, 0, len(names))
	for _, name := range names {
		out = append(out, checkLink(filepath.Join(dir, name), name, binary))
	}
	return out, nil
}

// LinksOK reports whether every status is ok.
func LinksOK(sts []LinkStatus) bool {
	for _, s := range sts {
		if s.State != LinkOK {
			return false
		}
	}
	return true
}

func checkLink(path, name, binary string) LinkStatus {
	st := LinkStatus{Applet: name, Path: path}
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		st.State = LinkMissing
		return st
	}
	if err != nil {
		st.State, st.Detail = LinkForeign, err.Error()
		return st
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		st.Target, _ = os.Readlink(path)
	}
	same, err := sameFile(path, binary)
	switch {
	case err != nil:
		st.State, st.Detail = LinkForeign, err.Error()
	case same:
		st.State = LinkOK
	case st.Target != "":
		st.State, st.Detail = LinkForeign, "points at another file"
	default:
		st.State, st.Detail = LinkForeign, "a "+fi.Mode().Type().String()+" file, not this binary"
		if fi.Mode().IsRegular() {
			st.Detail = "a regular file, not this binary"
		}
	}
	return st
}

// sameFile reports whether path (following links) is the file binary.
func sameFile(path, binary string) (bool, error) {
	a, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	b, err := os.Stat(binary)
	if err != nil {
		return false, err
	}
	return os.SameFile(a, b), nil
}
