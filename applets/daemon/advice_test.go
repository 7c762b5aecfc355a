package daemon

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"banger/internal/errdefs"
	"banger/rpc"
)

// A store's failure gets the daemon's advice, keeping its kind; a
// failure of another kind, or one already wrapped, passes as it is.
func TestAdviceOnAStoresFailure(t *testing.T) {
	err := noImage(errdefs.Errorf(errdefs.ErrNotFound, "image %q does not exist", "x"))
	if rpc.CodeOf(err) != rpc.CodeNotFound || rpc.MessageOf(err) != "image \"x\" does not exist; `banger image list` shows the images there are" {
		t.Errorf("advised: %v", err)
	}
	for _, e := range []error{
		errdefs.Errorf(errdefs.ErrConflict, "image x is used by box"),
		fmt.Errorf("resolve: %w", errdefs.Errorf(errdefs.ErrNotFound, "image x does not exist")),
		errors.New("disk full"),
	} {
		if got := noImage(e); got != e || strings.Contains(got.Error(), "image list") {
			t.Errorf("%v advised as %v", e, got)
		}
	}
	if noKernel(nil, "k") != nil {
		t.Error("no error advised")
	}
}
