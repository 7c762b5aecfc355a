package daemon

import (
	"testing"

	"banger/internal/api"
	"banger/rpc"
	"banger/rpc/rpctest"
)

// The typed client (api.Client, banger's Go API) and the daemon's method
// table name the same methods, each once.
func TestTheTypedClientCallsEveryMethod(t *testing.T) {
	rpctest.SameMethods(t, (&daemon{}).methods(), func(c rpc.Caller) api.Client { return api.Client{Caller: c} })
}
