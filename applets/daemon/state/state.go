// Package state is the daemon's durable record: VMs, images and
// operations in one SQLite database (modernc.org/sqlite, pure Go, so the
// binary stays static), in WAL mode with foreign keys on, and a schema
// that only moves forward.
//
// It stores and returns plain rows; it decides nothing about VMs. Every
// write is one transaction, so a daemon killed at any instant leaves the
// database as it was before or after that write.
package state

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"banger/internal/errdefs"
)

// DB is the open database.
type DB struct {
	sql *sql.DB
}

// Open opens (creating if needed) the database at path and migrates it
// forward. A database written by a newer banger is refused, not altered.
func Open(ctx context.Context, path string) (*DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)" +
		"&_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// One writer at a time is SQLite's rule anyway; a small pool keeps
	// readers from queueing behind it.
	db.SetMaxOpenConns(4)
	d := &DB{sql: db}
	if err := d.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate %s: %w", path, err)
	}
	return d, nil
}

// Close closes the database.
func (d *DB) Close() error { return d.sql.Close() }

// tx runs fn in one transaction, committed when fn returns nil.
func (d *DB) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := d.sql.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// Times are stored as RFC 3339 text in UTC, which sorts as time.
const timeFormat = time.RFC3339Nano

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(timeFormat)
}

func parseTime(s string) time.Time {
	t, _ := time.Parse(timeFormat, s)
	return t
}

// notFound is the error of a missing row, with the protocol's code.
func notFound(kind, name string) error {
	return errdefs.Errorf(errdefs.ErrNotFound, "%s %q not found", kind, name)
}

func isNoRows(err error) bool { return errors.Is(err, sql.ErrNoRows) }
