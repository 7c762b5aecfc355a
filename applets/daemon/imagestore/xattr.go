package imagestore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// paxXattr prefixes a tar PAX record that carries an extended attribute.
const paxXattr = "SCHILY.xattr."

// maxXattrValue bounds a value kept: all of an inode's attributes share
// one 4 KiB block in ext4.
const maxXattrValue = 3 << 10

// xattrNamespaces are the namespaces an image's attributes may be in: a
// name in none of them is no Linux attribute.
var xattrNamespaces = []string{"security.", "user.", "trusted.", "system.posix_acl_"}

// keepXattrs records the extended attributes among a tar member's PAX
// records for the entry name (its last element followed for a
// directory, as mkdir follows it).
func (st *stager) keepXattrs(name string, followLast bool, recs map[string]string) error {
	for k, v := range recs {
		attr, ok := strings.CutPrefix(k, paxXattr)
		if !ok {
			continue
		}
		switch {
		case !knownXattr(attr) || strings.ContainsAny(attr, "\n\x00") || strings.Contains(name, "\n"):
			st.skip("extended attributes debugfs cannot name", name)
			continue
		case len(v) > maxXattrValue:
			st.skip("extended attributes too large for ext4", name)
			continue
		}
		p, err := st.resolve(name, followLast)
		if err != nil {
			return err
		}
		if strings.ContainsAny(p, "\n\x00") {
			// Through a symlink whose target has a newline: a debugfs
			// line would end there, and the rest be a command of the
			// archive's (dump writes to the host).
			st.skip("extended attributes debugfs cannot name", name)
			continue
		}
		if st.xattrs[p] == nil {
			st.xattrs[p] = map[string]string{}
		}
		st.xattrs[p][attr] = v
	}
	return nil
}

func knownXattr(name string) bool {
	for _, ns := range xattrNamespaces {
		if strings.HasPrefix(name, ns) && len(name) > len(ns) {
			return true
		}
	}
	return false
}

// applyXattrs sets the extended attributes kept (file capabilities
// above all) in the image file with debugfs: the daemon is not root, so
// the staging tree cannot hold security.* attributes and mkfs.ext4 -d
// cannot copy them, but debugfs writes them into the image as it writes
// owners. A value is binary, so each goes through a file of the import's
// temporary directory (ea_set -f).
func (st *stager) applyXattrs(ctx context.Context, tmp, file string) error {
	if len(st.xattrs) == 0 {
		return nil
	}
	if err := os.Mkdir(filepath.Join(tmp, xattrsDir), 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(filepath.Join(tmp, xattrsDir))
	var b strings.Builder
	n := 0
	for _, p := range sortedKeys(st.xattrs) {
		for _, attr := range sortedKeys(st.xattrs[p]) {
			value := filepath.Join(xattrsDir, strconv.Itoa(n))
			n++
			if err := os.WriteFile(filepath.Join(tmp, value), []byte(st.xattrs[p][attr]), 0o600); err != nil {
				return err
			}
			fmt.Fprintf(&b, "ea_set -f %s %s %s\n", value, debugfsQuote("/"+p), debugfsQuote(attr))
		}
	}
	if _, err := debugfs(ctx, tmp, file, true, b.String()); err != nil {
		return fmt.Errorf("set extended attributes in the root filesystem: %w", err)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
