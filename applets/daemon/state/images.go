package state

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"banger/internal/errdefs"
)

// Image is an image's row: the index of the image store, and what VMs
// refer to (a VM's image cannot be deleted while the VM exists).
type Image struct {
	Name       string
	Digest     string
	SizeBytes  int64
	Created    time.Time
	KernelArgs string
}

// PutImage inserts or replaces the image's row.
func (d *DB) PutImage(ctx context.Context, im Image) error {
	_, err := d.sql.ExecContext(ctx, `INSERT INTO images (name, digest, size_bytes, created, kernel_args)
		VALUES (?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET digest=excluded.digest,
		size_bytes=excluded.size_bytes, created=excluded.created, kernel_args=excluded.kernel_args`,
		im.Name, im.Digest, im.SizeBytes, fmtTime(im.Created), im.KernelArgs)
	if err != nil {
		return fmt.Errorf("record image %s: %w", im.Name, err)
	}
	return nil
}

// GetImage returns the image's row.
func (d *DB) GetImage(ctx context.Context, name string) (Image, error) {
	var im Image
	var created string
	err := d.sql.QueryRowContext(ctx, `SELECT name, digest, size_bytes, created, kernel_args FROM images WHERE name = ?`, name).
		Scan(&im.Name, &im.Digest, &im.SizeBytes, &created, &im.KernelArgs)
	if isNoRows(err) {
		return Image{}, notFound("image", name)
	}
	im.Created = parseTime(created)
	return im, err
}

// ListImages returns every image row by name.
func (d *DB) ListImages(ctx context.Context) ([]Image, error) {
	rows, err := d.sql.QueryContext(ctx, `SELECT name, digest, size_bytes, created, kernel_args FROM images ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Image
	for rows.Next() {
		var im Image
		var created string
		if err := rows.Scan(&im.Name, &im.Digest, &im.SizeBytes, &created, &im.KernelArgs); err != nil {
			return nil, err
		}
		im.Created = parseTime(created)
		out = append(out, im)
	}
	return out, rows.Err()
}

// DeleteImage removes the image's row; an image some VM uses is a
// conflict that names the VMs.
func (d *DB) DeleteImage(ctx context.Context, name string) error {
	return d.tx(ctx, func(tx *sql.Tx) error {
		users, err := vmsUsing(ctx, tx, name)
		if err != nil {
			return err
		}
		if len(users) > 0 {
			return errdefs.Errorf(errdefs.ErrConflict, "image %q is used by %s; delete those VMs first", name, strings.Join(users, ", "))
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM images WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return notFound("image", name)
		}
		return nil
	})
}

// ImageUsers lists the VMs that use the image.
func (d *DB) ImageUsers(ctx context.Context, name string) ([]string, error) {
	var users []string
	err := d.tx(ctx, func(tx *sql.Tx) error {
		var err error
		users, err = vmsUsing(ctx, tx, name)
		return err
	})
	return users, err
}

func vmsUsing(ctx context.Context, tx *sql.Tx, image string) ([]string, error) {
	rows, err := tx.QueryContext(ctx, `SELECT name FROM vms WHERE image = ? ORDER BY name`, image)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		names = append(names, n)
	}
	return names, rows.Err()
}
