package helper

import (
	"context"
	"os"

	"banger/internal/api"
	"banger/internal/privapi"
	"banger/rpc"
)

// methods is the helper's closed list of operations.
func methods(build api.Build, net *network) rpc.Methods {
	return rpc.Methods{
		privapi.MethodPing: rpc.Handle(func(ctx context.Context, _ rpc.NoParams) (privapi.PingResult, error) {
			return privPing(build)
		}),
		privapi.MethodEnsureBridge: checkThen(net, checkEnsureBridge, net.ensureBridge),
		privapi.MethodCreateTap:    checkThen(net, checkCreateTap, net.createTap),
		privapi.MethodDeleteTap:    checkThen(net, checkDeleteTap, net.deleteTap),
		privapi.MethodEnsureNAT:    checkThen(net, checkEnsureNAT, net.ensureNAT),
		privapi.MethodClearNAT:     checkThen(net, checkClearNAT, net.clearNAT),
		privapi.MethodClearDNS:     checkThen(net, checkClearNAT, net.clearDNS),
		privapi.MethodResetNetwork: rpc.Handle(net.resetNetwork),
	}
}

func privPing(build api.Build) (privapi.PingResult, error) {
	caps, err := readCapabilities()
	if err != nil {
		return privapi.PingResult{}, rpc.Errorf(rpc.CodeOperationFailed, "read capabilities: %v", err)
	}
	return privapi.PingResult{
		Version:      build.String(),
		EUID:         os.Geteuid(),
		CapEffective: caps.hex,
		Capabilities: caps.names(),
	}, nil
}
