package api

import (
	"context"

	"banger/rpc"
)

// Client is banger's Go API: the daemon's typed client, one method per
// call of its rpc socket, each with its params and result types. Build
// it on any rpc.Caller: an rpc.Client on the daemon's socket (the
// client applet's wraps one that starts the daemon when it is not
// running). Streams (vm.exec, vm.copy) go on the daemon's stream socket
// (rpc.Client.OpenStream, then package session's frames); long calls
// (the *Begin methods) return an Operation to follow with
// WaitOperation. docs/protocol.md has the wire format.
type Client struct{ rpc.Caller }

func (c Client) Ping(ctx context.Context) (PingResult, error) {
	return rpc.CallFor[PingResult](ctx, c, MethodPing, nil)
}

func (c Client) Version(ctx context.Context) (VersionResult, error) {
	return rpc.CallFor[VersionResult](ctx, c, MethodVersion, nil)
}

// Shutdown stops the daemon; its VMs keep running.
func (c Client) Shutdown(ctx context.Context) error {
	_, err := rpc.CallFor[struct{}](ctx, c, MethodShutdown, nil)
	return err
}

// HostCheck asks the daemon to reach its root helper.
func (c Client) HostCheck(ctx context.Context) (HostCheckResult, error) {
	return rpc.CallFor[HostCheckResult](ctx, c, MethodHostCheck, nil)
}

func (c Client) HostAccel(ctx context.Context) (HostAccelResult, error) {
	return rpc.CallFor[HostAccelResult](ctx, c, MethodHostAccel, nil)
}

func (c Client) HostDoctor(ctx context.Context) (DoctorResult, error) {
	return rpc.CallFor[DoctorResult](ctx, c, MethodHostDoctor, nil)
}

// CreateVM begins a create: the VM is ready when its operation is done.
func (c Client) CreateVM(ctx context.Context, p VMCreate) (Operation, error) {
	return rpc.CallFor[Operation](ctx, c, MethodVMCreateBegin, p)
}

func (c Client) StartVM(ctx context.Context, p VMRef) (Operation, error) {
	return rpc.CallFor[Operation](ctx, c, MethodVMStartBegin, p)
}

func (c Client) RestartVM(ctx context.Context, p VMRef) (Operation, error) {
	return rpc.CallFor[Operation](ctx, c, MethodVMRestartBegin, p)
}

func (c Client) StopVM(ctx context.Context, p VMStop) (VM, error) {
	return rpc.CallFor[VM](ctx, c, MethodVMStop, p)
}

func (c Client) KillVM(ctx context.Context, p VMRef) (VM, error) {
	return rpc.CallFor[VM](ctx, c, MethodVMKill, p)
}

func (c Client) DeleteVM(ctx context.Context, p VMDelete) (VM, error) {
	return rpc.CallFor[VM](ctx, c, MethodVMDelete, p)
}

func (c Client) PruneVMs(ctx context.Context) (PruneResult, error) {
	return rpc.CallFor[PruneResult](ctx, c, MethodVMPrune, nil)
}

func (c Client) ListVMs(ctx context.Context) ([]VM, error) {
	return rpc.CallFor[[]VM](ctx, c, MethodVMList, nil)
}

func (c Client) ShowVM(ctx context.Context, p VMRef) (VM, error) {
	return rpc.CallFor[VM](ctx, c, MethodVMShow, p)
}

func (c Client) VMLogs(ctx context.Context, p VMLogs) (VMLogsResult, error) {
	return rpc.CallFor[VMLogsResult](ctx, c, MethodVMLogs, p)
}

func (c Client) VMPorts(ctx context.Context, p VMRef) (VMPorts, error) {
	return rpc.CallFor[VMPorts](ctx, c, MethodVMPorts, p)
}

func (c Client) AddPort(ctx context.Context, p VMPort) (VM, error) {
	return rpc.CallFor[VM](ctx, c, MethodVMPortAdd, p)
}

func (c Client) RemovePort(ctx context.Context, p VMPort) (VM, error) {
	return rpc.CallFor[VM](ctx, c, MethodVMPortRemove, p)
}

// SignalExec sends a signal to the command of a running exec session.
func (c Client) SignalExec(ctx context.Context, p VMExecSignal) error {
	_, err := rpc.CallFor[struct{}](ctx, c, MethodVMExecSignal, p)
	return err
}

func (c Client) ResetNetwork(ctx context.Context) (NetworkResetResult, error) {
	return rpc.CallFor[NetworkResetResult](ctx, c, MethodNetworkReset, nil)
}

func (c Client) ImportImage(ctx context.Context, p ImageImport) (Image, error) {
	return rpc.CallFor[Image](ctx, c, MethodImageImport, p)
}

func (c Client) ListImages(ctx context.Context) ([]Image, error) {
	return rpc.CallFor[[]Image](ctx, c, MethodImageList, nil)
}

func (c Client) ShowImage(ctx context.Context, p VMRef) (Image, error) {
	return rpc.CallFor[Image](ctx, c, MethodImageShow, p)
}

func (c Client) DeleteImage(ctx context.Context, p VMRef) (Image, error) {
	return rpc.CallFor[Image](ctx, c, MethodImageDelete, p)
}

// BeginImportImage begins importing an image, as an operation.
func (c Client) BeginImportImage(ctx context.Context, p ImageImport) (Operation, error) {
	return rpc.CallFor[Operation](ctx, c, MethodImageImportBegin, p)
}

// WarmImage begins saving an image's warm snapshot.
func (c Client) WarmImage(ctx context.Context, p ImageWarm) (Operation, error) {
	return rpc.CallFor[Operation](ctx, c, MethodImageWarmBegin, p)
}

func (c Client) BuildKernel(ctx context.Context, p KernelBuild) (Operation, error) {
	return rpc.CallFor[Operation](ctx, c, MethodKernelBuildBegin, p)
}

func (c Client) ListKernels(ctx context.Context) ([]Kernel, error) {
	return rpc.CallFor[[]Kernel](ctx, c, MethodKernelList, nil)
}

func (c Client) ShowKernel(ctx context.Context, p VMRef) (Kernel, error) {
	return rpc.CallFor[Kernel](ctx, c, MethodKernelShow, p)
}

func (c Client) DeleteKernel(ctx context.Context, p VMRef) (Kernel, error) {
	return rpc.CallFor[Kernel](ctx, c, MethodKernelDelete, p)
}

func (c Client) OperationStatus(ctx context.Context, p OperationID) (Operation, error) {
	return rpc.CallFor[Operation](ctx, c, MethodOperationStatus, p)
}

// WaitOperation waits (up to p.TimeoutMS) for an operation to end.
func (c Client) WaitOperation(ctx context.Context, p OperationWait) (Operation, error) {
	return rpc.CallFor[Operation](ctx, c, MethodOperationWait, p)
}

func (c Client) CancelOperation(ctx context.Context, p OperationID) (Operation, error) {
	return rpc.CallFor[Operation](ctx, c, MethodOperationCancel, p)
}

func (c Client) ListOperations(ctx context.Context) ([]Operation, error) {
	return rpc.CallFor[[]Operation](ctx, c, MethodOperationList, nil)
}
