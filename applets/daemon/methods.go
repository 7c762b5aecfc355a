package daemon

import (
	"context"
	"os"
	"runtime"
	"time"

	"banger/internal/api"
	"banger/internal/privapi"
	"banger/logging"
	"banger/rpc"
)

// methods is the daemon's dispatch table.
func (d *daemon) methods() rpc.Methods {
	return rpc.Methods{
		api.MethodHostCheck:  rpc.Handle(d.hostCheck),
		api.MethodHostAccel:  rpc.Handle(d.hostAccel),
		api.MethodHostDoctor: rpc.Handle(d.hostDoctor),

		api.MethodVMCreateBegin:  rpc.Handle(d.vms.CreateBegin),
		api.MethodVMStartBegin:   rpc.Handle(d.vms.StartBegin),
		api.MethodVMRestartBegin: rpc.Handle(d.vms.RestartBegin),
		api.MethodVMStop:         rpc.Handle(d.vms.Stop),
		api.MethodVMKill:         rpc.Handle(d.vms.Kill),
		api.MethodVMDelete:       rpc.Handle(d.vms.Delete),
		api.MethodVMPrune:        rpc.Handle(d.vms.Prune),
		api.MethodVMList:         rpc.Handle(d.vms.List),
		api.MethodVMShow:         rpc.Handle(d.vms.Show),
		api.MethodVMLogs:         rpc.Handle(d.vms.Logs),
		api.MethodVMPorts:        rpc.Handle(d.vms.Ports),
		api.MethodVMExecSignal:   rpc.Handle(d.vms.ExecSignal),
		api.MethodVMPortAdd:      rpc.Handle(d.vms.PortAdd),
		api.MethodVMPortRemove:   rpc.Handle(d.vms.PortRemove),

		api.MethodNetworkReset: rpc.Handle(d.vms.NetworkReset),

		api.MethodImageImport:      rpc.Handle(d.images.importImage),
		api.MethodImageImportBegin: rpc.Handle(d.images.importBegin),
		api.MethodImageBuildBegin:  rpc.Handle(d.images.buildBegin),
		api.MethodImageCommitBegin: rpc.Handle(d.images.commitBegin),
		api.MethodImageList:        rpc.Handle(d.images.list),
		api.MethodImageShow:        rpc.Handle(d.images.show),
		api.MethodImageDelete:      rpc.Handle(d.images.delete),
		api.MethodImageWarmBegin:   rpc.Handle(d.vms.WarmBegin),

		api.MethodKernelBuildBegin: rpc.Handle(d.kernels.buildBegin),
		api.MethodKernelList:       rpc.Handle(d.kernels.list),
		api.MethodKernelShow:       rpc.Handle(d.kernels.show),
		api.MethodKernelDelete:     rpc.Handle(d.kernels.delete),

		api.MethodOperationCancel: rpc.Handle(d.operationCancel),
		api.MethodOperationList:   rpc.Handle(d.operationList),
		api.MethodOperationStatus: rpc.Handle(d.operationStatus),
		api.MethodOperationWait:   rpc.Handle(d.operationWait),

		api.MethodPing:     rpc.Handle(d.ping),
		api.MethodShutdown: rpc.Handle(d.shutdown),
		api.MethodVersion:  rpc.Handle(d.version),
	}
}

// streams is the dispatch table of the stream socket.
func (d *daemon) streams() rpc.Streams {
	return rpc.Streams{
		api.MethodVMExec:    rpc.HandleStream(d.vms.Exec),
		api.MethodVMCopy:    rpc.HandleStream(d.vms.CopyIn),
		api.MethodVMCopyOut: rpc.HandleStream(d.vms.CopyOut),
	}
}

func (d *daemon) ping(ctx context.Context, _ rpc.NoParams) (api.PingResult, error) {
	return api.PingResult{
		Version:  d.build.String(),
		PID:      os.Getpid(),
		UptimeMS: logging.Millis(time.Since(d.started)),
	}, nil
}

func (d *daemon) version(ctx context.Context, _ rpc.NoParams) (api.VersionResult, error) {
	return api.VersionResult{Build: d.build, Protocol: rpc.Version, Go: runtime.Version()}, nil
}

// shutdown answers at once and stops the daemon after the answer is
// written: the server's shutdown waits for calls in flight, this one
// included.
func (d *daemon) shutdown(ctx context.Context, _ rpc.NoParams) (struct{}, error) {
	logging.From(ctx).Info().Msg("shutdown requested")
	d.stopOnce.Do(func() { close(d.stop) })
	return struct{}{}, nil
}

// hostCheck asks the root helper for priv.ping with this call's op id and
// reports what it said.
func (d *daemon) hostCheck(ctx context.Context, _ rpc.NoParams) (api.HostCheckResult, error) {
	res := api.HostCheckResult{HelperMode: d.helper.mode, HelperPath: d.helper.path}
	err := logging.Stage(ctx, "call helper", func(ctx context.Context) error {
		var err error
		res.Helper, err = privapi.Client{Caller: d.helper}.Ping(ctx)
		return err
	})
	return res, err
}
