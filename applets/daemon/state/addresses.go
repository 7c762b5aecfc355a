package state

import (
	"context"
	"database/sql"
	"fmt"
	"net/netip"

	"banger/internal/errdefs"
)

// AllocateAddress gives the VM called name the lowest address from first
// to last (both included) that no other VM holds, in one transaction, and
// returns it. A VM that already holds an address in that range keeps it,
// so asking again is harmless; one outside the range (the network was
// changed) is replaced. The address is the VM's until ReleaseAddress or
// the row's deletion.
func (d *DB) AllocateAddress(ctx context.Context, name string, first, last netip.Addr) (netip.Addr, error) {
	if !first.Is4() || !last.Is4() || last.Less(first) {
		return netip.Addr{}, fmt.Errorf("allocate an address for %s: bad range %s-%s", name, first, last)
	}
	inRange := func(a netip.Addr) bool { return a.IsValid() && !a.Less(first) && !last.Less(a) }
	var got netip.Addr
	err := d.tx(ctx, func(tx *sql.Tx) error {
		var id, have string
		err := tx.QueryRowContext(ctx, `SELECT id, address FROM vms WHERE name = ?`, name).Scan(&id, &have)
		if isNoRows(err) {
			return notFound("vm", name)
		}
		if err != nil {
			return err
		}
		if a, err := netip.ParseAddr(have); err == nil && inRange(a) {
			got = a
			return nil
		}
		rows, err := tx.QueryContext(ctx, `SELECT address FROM vms WHERE address != '' AND id != ?`, id)
		if err != nil {
			return err
		}
		held := map[netip.Addr]bool{}
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				rows.Close()
				return err
			}
			if a, err := netip.ParseAddr(s); err == nil {
				held[a] = true
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for a := first; inRange(a); a = a.Next() {
			if !held[a] {
				got = a
				_, err := tx.ExecContext(ctx, `UPDATE vms SET address = ? WHERE id = ?`, a.String(), id)
				return err
			}
		}
		return errdefs.Errorf(errdefs.ErrConflict, "no free address for %s: every address from %s to %s is held by a VM; delete one", name, first, last)
	})
	return got, err
}

// ReleaseAddress gives up the address of the VM called name.
func (d *DB) ReleaseAddress(ctx context.Context, name string) error {
	res, err := d.sql.ExecContext(ctx, `UPDATE vms SET address = '' WHERE name = ?`, name)
	if err != nil {
		return fmt.Errorf("release the address of %s: %w", name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return notFound("vm", name)
	}
	return nil
}
