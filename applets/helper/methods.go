package helper

import (
	"context"
	"os"

	"banger/internal/api"
	"banger/rpc"
)

// methods is the helper's closed list of operations.
func methods(build api.Build, net *network) rpc.Methods {
	return rpc.Methods{
		api.MethodPrivPing: rpc.Handle(func(ctx context.Context, _ rpc.NoParams) (api.PrivPingResult, error) {
			return privPing(build)
		}),
		api.MethodPrivEnsureBridge: checkThen(net, checkEnsureBridge, net.ensureBridge),
		api.MethodPrivCreateTap:    checkThen(net, checkCreateTap, net.createTap),
		api.MethodPrivDeleteTap:    checkThen(net, checkDeleteTap, net.deleteTap),
		api.MethodPrivEnsureNAT:    checkThen(net, checkEnsureNAT, net.ensureNAT),
		api.MethodPrivClearNAT:     checkThen(net, checkClearNAT, net.clearNAT),
		api.MethodPrivClearDNS:     checkThen(net, checkClearNAT, net.clearDNS),
		api.MethodPrivResetNetwork: rpc.Handle(net.resetNetwork),
	}
}

func privPing(build api.Build) (api.PrivPingResult, error) {
	caps, err := readCapabilities()
	if err != nil {
		return api.PrivPingResult{}, rpc.Errorf(rpc.CodeOperationFailed, "read capabilities: %v", err)
	}
	return api.PrivPingResult{
		Version:      build.String(),
		EUID:         os.Geteuid(),
		CapEffective: caps.hex,
		Capabilities: caps.names(),
	}, nil
}
