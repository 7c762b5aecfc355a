package state

import (
	"context"
	"database/sql"
	"fmt"
)

// migrations are applied in order, each once; the database's
// user_version is the number applied. Never edit or reorder one that has
// shipped: add a new one.
var migrations = []string{
	// 1: images, VMs, operations.
	`CREATE TABLE images (
		name        TEXT PRIMARY KEY,
		digest      TEXT NOT NULL,
		size_bytes  INTEGER NOT NULL,
		created     TEXT NOT NULL,
		kernel_args TEXT NOT NULL DEFAULT ''
	);
	CREATE TABLE vms (
		id           TEXT PRIMARY KEY,
		name         TEXT NOT NULL UNIQUE,
		image        TEXT NOT NULL REFERENCES images(name) ON DELETE RESTRICT,
		cpus         INTEGER NOT NULL,
		memory_mib   INTEGER NOT NULL,
		disk_mib     INTEGER NOT NULL,
		state        TEXT NOT NULL,
		network      TEXT NOT NULL,
		created      TEXT NOT NULL,
		updated      TEXT NOT NULL,
		last_error   TEXT NOT NULL DEFAULT '',
		instance_dir TEXT NOT NULL,
		pid          INTEGER NOT NULL DEFAULT 0,
		boot_id      TEXT NOT NULL DEFAULT '',
		runtime      TEXT NOT NULL DEFAULT '{}'
	);
	CREATE TABLE operations (
		id       TEXT PRIMARY KEY,
		kind     TEXT NOT NULL,
		target   TEXT NOT NULL DEFAULT '',
		state    TEXT NOT NULL,
		created  TEXT NOT NULL,
		finished TEXT NOT NULL DEFAULT '',
		stages   TEXT NOT NULL DEFAULT '[]',
		result   TEXT NOT NULL DEFAULT '',
		error    TEXT NOT NULL DEFAULT ''
	);
	CREATE INDEX operations_created ON operations(created);`,
	// 2: each VM's published ports, a JSON array of PortForward.
	`ALTER TABLE vms ADD COLUMN ports TEXT NOT NULL DEFAULT '[]';`,
	// 3: a bridged VM's address (held while its row exists, one VM each)
	// and its tap (recorded before the tap is made, cleared once it is
	// gone, so a restarted daemon removes what a dead one left).
	`ALTER TABLE vms ADD COLUMN address TEXT NOT NULL DEFAULT '';
	ALTER TABLE vms ADD COLUMN tap TEXT NOT NULL DEFAULT '';
	CREATE UNIQUE INDEX vms_address ON vms(address) WHERE address != '';
	CREATE UNIQUE INDEX vms_tap ON vms(tap) WHERE tap != '';`,
	// 4: the host loopback ports a user-mode VM may reach, a JSON array.
	`ALTER TABLE vms ADD COLUMN allow_host TEXT NOT NULL DEFAULT '[]';`,
}

func (d *DB) migrate(ctx context.Context) error {
	var have int
	if err := d.sql.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&have); err != nil {
		return err
	}
	if have > len(migrations) {
		return fmt.Errorf("the database is at schema %d, newer than this banger knows (%d); use a newer banger", have, len(migrations))
	}
	for v := have; v < len(migrations); v++ {
		err := d.tx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, v+1))
			return err
		})
		if err != nil {
			return fmt.Errorf("schema %d: %w", v+1, err)
		}
	}
	return nil
}
