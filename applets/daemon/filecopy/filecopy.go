// Package filecopy copies files whole: disks, snapshots' parts, templates.
// io.Copy between two files uses copy_file_range, so the kernel copies
// (and shares blocks where the file system can).
package filecopy

import (
	"io"
	"os"
)

// New copies src to dst, which must not exist. On failure dst is gone.
func New(src, dst string) error {
	return copyTo(src, dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
}

// Over copies src to dst, a new file or an existing one whose content it
// replaces: the same inode, so a process that has dst open reads the new
// content. On failure dst is gone.
func Over(src, dst string) error {
	return copyTo(src, dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
}

func copyTo(src, dst string, flags int) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, flags, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	if err := out.Close(); err != nil {
		os.Remove(dst)
		return err
	}
	return nil
}
