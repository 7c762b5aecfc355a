package vm

import (
	"context"
	"errors"
	"slices"
	"testing"

	"banger/internal/session"
)

// defaultsImages is fakeImages with exec defaults for the image "oci".
type defaultsImages struct{ fakeImages }

func (defaultsImages) ExecDefaults(_ context.Context, name string) ([]string, string, error) {
	switch name {
	case "oci":
		return []string{"PATH=/opt/bin:/bin", "GREETING=hi"}, "/work", nil
	case "broken":
		return nil, "", errors.New("manifest unreadable")
	}
	return nil, "", nil
}

func TestWithImageDefaults(t *testing.T) {
	s := &Service{images: defaultsImages{}}
	for _, tc := range []struct {
		image   string
		in      session.Exec
		env     []string
		dir     string
		comment string
	}{
		{"oci", session.Exec{}, []string{"PATH=/opt/bin:/bin", "GREETING=hi"}, "/work", "the image's"},
		{"oci", session.Exec{Env: []string{"GREETING=yo"}, Dir: "/root/repo"},
			[]string{"PATH=/opt/bin:/bin", "GREETING=hi", "GREETING=yo"}, "/root/repo", "the caller's after, so they win"},
		{"tiny", session.Exec{Env: []string{"A=1"}}, []string{"A=1"}, "", "an image without any"},
		{"broken", session.Exec{Env: []string{"A=1"}}, []string{"A=1"}, "", "an image that cannot be read"},
	} {
		got := s.withImageDefaults(context.Background(), tc.image, tc.in)
		if !slices.Equal(got.Env, tc.env) || got.Dir != tc.dir {
			t.Errorf("%s (%s): env %q dir %q; want %q %q", tc.image, tc.comment, got.Env, got.Dir, tc.env, tc.dir)
		}
	}
}
