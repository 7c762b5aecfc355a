package helper

import (
	"context"
	"os"

	"banger/applets/api"
	"banger/rpc"
)

// methods is the helper's closed list of operations.
func methods(build api.Build) rpc.Methods {
	return rpc.Methods{
		api.MethodPrivPing: rpc.Handle(func(ctx context.Context, _ rpc.NoParams) (api.PrivPingResult, error) {
			return privPing(build)
		}),
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
