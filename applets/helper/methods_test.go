package helper

import (
	"testing"

	"banger/internal/api"
	"banger/internal/privapi"
	"banger/rpc"
	"banger/rpc/rpctest"
)

// The helper's typed client (the daemon's) and its method table name the
// same methods, each once.
func TestTheTypedClientCallsEveryMethod(t *testing.T) {
	rpctest.SameMethods(t, methods(api.Build{}, &network{}), func(c rpc.Caller) privapi.Client { return privapi.Client{Caller: c} })
}
