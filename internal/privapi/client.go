package privapi

import (
	"context"

	"banger/rpc"
)

// Client is the helper's typed client: each method is one priv.* call,
// with its params and result types.
type Client struct{ rpc.Caller }

func (c Client) Ping(ctx context.Context) (PingResult, error) {
	return rpc.CallFor[PingResult](ctx, c, MethodPing, nil)
}

func (c Client) EnsureBridge(ctx context.Context, p Bridge) (BridgeResult, error) {
	return rpc.CallFor[BridgeResult](ctx, c, MethodEnsureBridge, p)
}

func (c Client) CreateTap(ctx context.Context, p Tap) (TapResult, error) {
	return rpc.CallFor[TapResult](ctx, c, MethodCreateTap, p)
}

func (c Client) DeleteTap(ctx context.Context, p Tap) (TapResult, error) {
	return rpc.CallFor[TapResult](ctx, c, MethodDeleteTap, p)
}

func (c Client) EnsureNAT(ctx context.Context, p NAT) (NATResult, error) {
	return rpc.CallFor[NATResult](ctx, c, MethodEnsureNAT, p)
}

func (c Client) ClearNAT(ctx context.Context, p NAT) (NATResult, error) {
	return rpc.CallFor[NATResult](ctx, c, MethodClearNAT, p)
}

func (c Client) ClearDNS(ctx context.Context, p NAT) (NATResult, error) {
	return rpc.CallFor[NATResult](ctx, c, MethodClearDNS, p)
}

func (c Client) ResetNetwork(ctx context.Context) (ResetResult, error) {
	return rpc.CallFor[ResetResult](ctx, c, MethodResetNetwork, nil)
}
