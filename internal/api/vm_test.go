package api

import (
	"strings"
	"testing"

	"banger/rpc"
)

func TestValidName(t *testing.T) {
	for _, ok := range []string{"a", "box", "my-vm-2", "0", strings.Repeat("x", 63)} {
		if err := ValidName("vm", ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "UPPER", "-x", "x-", strings.Repeat("x", 64), "a/b", "..", "a.b", "a_b", "é", "a b"} {
		err := ValidName("vm", bad)
		if rpc.CodeOf(err) != rpc.CodeInvalidParams {
			t.Errorf("%q: %v, want invalid_params", bad, err)
		}
	}
}
