package rpc

import (
	"context"
	"strings"

	"github.com/oklog/ulid/v2"
)

const opIDPrefix = "op-"

type opIDKey struct{}

// NewOpID mints an op id: "op-" and a ULID, so ids sort by time.
func NewOpID() string {
	return opIDPrefix + ulid.Make().String()
}

// ValidOpID reports whether s is a well-formed op id. The helper adopts only
// well-formed inbound ids, so nothing a peer sends ends up in a log verbatim.
func ValidOpID(s string) bool {
	id, ok := strings.CutPrefix(s, opIDPrefix)
	if !ok || len(id) != ulid.EncodedSize {
		return false
	}
	_, err := ulid.ParseStrict(id)
	return err == nil
}

// WithOpID returns a context that carries the op id; every call made with
// it forwards the id in the request.
func WithOpID(ctx context.Context, opID string) context.Context {
	return context.WithValue(ctx, opIDKey{}, opID)
}

// OpIDFrom returns the op id on the context, or "".
func OpIDFrom(ctx context.Context) string {
	s, _ := ctx.Value(opIDKey{}).(string)
	return s
}
