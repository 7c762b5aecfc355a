package state

import (
	"context"
	"time"
)

// Operation is an operation's row. The registry in memory is the live
// view; the row lets a restarted daemon report, and clean up after,
// operations a dead daemon left running.
type Operation struct {
	ID       string
	Kind     string
	Target   string
	State    string
	Created  time.Time
	Finished time.Time
	Stages   string // JSON
	Result   string // JSON, may be empty
	Error    string // JSON, may be empty
}

// PutOperation inserts or replaces an operation's row.
func (d *DB) PutOperation(ctx context.Context, op Operation) error {
	_, err := d.sql.ExecContext(ctx, `INSERT INTO operations (id, kind, target, state, created, finished, stages, result, error)
		VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET state=excluded.state, finished=excluded.finished,
		stages=excluded.stages, result=excluded.result, error=excluded.error`,
		op.ID, op.Kind, op.Target, op.State, fmtTime(op.Created), fmtTime(op.Finished), op.Stages, op.Result, op.Error)
	return err
}

// ListOperations returns operations created at or after since, oldest
// first.
func (d *DB) ListOperations(ctx context.Context, since time.Time) ([]Operation, error) {
	rows, err := d.sql.QueryContext(ctx, `SELECT id, kind, target, state, created, finished, stages, result, error
		FROM operations WHERE created >= ? ORDER BY created`, fmtTime(since))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Operation
	for rows.Next() {
		var op Operation
		var created, finished string
		if err := rows.Scan(&op.ID, &op.Kind, &op.Target, &op.State, &created, &finished, &op.Stages, &op.Result, &op.Error); err != nil {
			return nil, err
		}
		op.Created, op.Finished = parseTime(created), parseTime(finished)
		out = append(out, op)
	}
	return out, rows.Err()
}

// PruneOperations deletes finished operations older than before.
func (d *DB) PruneOperations(ctx context.Context, before time.Time) error {
	_, err := d.sql.ExecContext(ctx, `DELETE FROM operations WHERE finished != '' AND finished < ?`, fmtTime(before))
	return err
}
