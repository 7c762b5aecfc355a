package rpc

import "context"

// CallerFunc is a function that is a Caller.
type CallerFunc func(ctx context.Context, method string, params, result any) error

func (f CallerFunc) Call(ctx context.Context, method string, params, result any) error {
	return f(ctx, method, params, result)
}

// CallFor makes one call on c and returns its result as an R: what each
// method of a typed client does.
func CallFor[R any](ctx context.Context, c Caller, method string, params any) (R, error) {
	var r R
	err := c.Call(ctx, method, params, &r)
	return r, err
}
