package daemon

import (
	"context"
	"encoding/json"
	"time"

	"banger/applets/daemon/operation"
	"banger/applets/daemon/state"
	"banger/internal/api"
	"banger/logging"
	"banger/rpc"
)

// maxWait bounds one operation.wait long poll; clients poll again.
const maxWait = 60 * time.Second

func (d *daemon) operationStatus(ctx context.Context, p api.OperationID) (api.Operation, error) {
	return d.ops.Status(p.ID)
}

func (d *daemon) operationWait(ctx context.Context, p api.OperationWait) (api.Operation, error) {
	timeout := time.Duration(p.TimeoutMS) * time.Millisecond
	if timeout <= 0 || timeout > maxWait {
		timeout = maxWait
	}
	return d.ops.Wait(ctx, p.ID, timeout)
}

func (d *daemon) operationCancel(ctx context.Context, p api.OperationID) (api.Operation, error) {
	return d.ops.Cancel(ctx, p.ID)
}

func (d *daemon) operationList(ctx context.Context, _ rpc.NoParams) ([]api.Operation, error) {
	return d.ops.List(), nil
}

// persistOperation records an operation's view in the state database.
func (d *daemon) persistOperation(ctx context.Context, op api.Operation) error {
	row := state.Operation{ID: op.ID, Kind: op.Kind, Target: op.Target, State: op.State, Created: op.Created}
	if op.Finished != nil {
		row.Finished = *op.Finished
	}
	stages, _ := json.Marshal(op.Stages)
	row.Stages = string(stages)
	row.Result = string(op.Result)
	if op.Error != nil {
		e, _ := json.Marshal(op.Error)
		row.Error = string(e)
	}
	return d.db.PutOperation(ctx, row)
}

// recoverOperations reads back the recent operations of a previous daemon:
// those that were still running died with it and are marked failed; all
// stay readable for operation.status. It returns the interrupted ones so
// the daemon can clean up after them.
func (d *daemon) recoverOperations(ctx context.Context) ([]api.Operation, error) {
	rows, err := d.db.ListOperations(ctx, time.Now().Add(-operation.Keep))
	if err != nil {
		return nil, err
	}
	var interrupted []api.Operation
	for _, row := range rows {
		op := api.Operation{ID: row.ID, Kind: row.Kind, Target: row.Target, State: row.State, Created: row.Created}
		json.Unmarshal([]byte(row.Stages), &op.Stages)
		if row.Result != "" {
			op.Result = json.RawMessage(row.Result)
		}
		if row.Error != "" {
			op.Error = &rpc.ErrorResponse{}
			json.Unmarshal([]byte(row.Error), op.Error)
		}
		if !row.Finished.IsZero() {
			f := row.Finished
			op.Finished = &f
		}
		if op.State == api.OpRunning {
			now := time.Now().UTC()
			op.State, op.Finished = api.OpFailed, &now
			op.Error = &rpc.ErrorResponse{Code: rpc.CodeOperationFailed, Message: "the daemon stopped while this operation ran; what it had done was cleaned up", OpID: op.ID}
			for i := range op.Stages {
				if op.Stages[i].State == api.StageRunning {
					op.Stages[i].State = api.StageFailed
				}
			}
			if err := d.persistOperation(ctx, op); err != nil {
				return nil, err
			}
			logging.From(ctx).Warn().Str("operation_id", op.ID).Str("operation", op.Kind).Str("target", op.Target).Msg("operation interrupted by a daemon stop; marked failed")
			interrupted = append(interrupted, op)
		}
		d.ops.Adopt(op)
	}
	return interrupted, d.db.PruneOperations(ctx, time.Now().Add(-24*time.Hour))
}

// interruptedCreates names the VMs whose create a dead daemon left
// running: their half-made VMs are removed, as the create's undo would.
func interruptedCreates(ops []api.Operation) map[string]bool {
	names := map[string]bool{}
	for _, op := range ops {
		if op.Kind == api.KindVMCreate {
			names[op.Target] = true
		}
	}
	return names
}
