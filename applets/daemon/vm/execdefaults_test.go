package vm

import (
	"context"
	"errors"
	"slices"
	"testing"

	"banger/internal/api"
	"banger/internal/session"
)

// defaultsImages is fakeImages with exec defaults for the image "oci".
type defaultsImages struct{ fakeImages }

func (defaultsImages) ExecDefaults(_ context.Context, name string) (api.OCIImage, error) {
	switch name {
	case "oci":
		return api.OCIImage{Env: []string{"PATH=/opt/bin:/bin", "GREETING=hi"}, WorkingDir: "/work", User: "app",
			Entrypoint: []string{"/bin/tool"}, Cmd: []string{"--serve"}}, nil
	case "cmd":
		return api.OCIImage{Cmd: []string{"python3"}}, nil
	case "broken":
		return api.OCIImage{}, errors.New("manifest unreadable")
	}
	return api.OCIImage{}, nil
}

func TestWithImageDefaults(t *testing.T) {
	s := &Service{images: defaultsImages{}}
	for _, tc := range []struct {
		image        string
		in           session.Exec
		imageCommand bool
		want         session.Exec
		comment      string
	}{
		{"oci", session.Exec{}, false, session.Exec{Env: []string{"PATH=/opt/bin:/bin", "GREETING=hi"}, Dir: "/work", User: "app"}, "the image's"},
		{"oci", session.Exec{Env: []string{"GREETING=yo"}, Dir: "~/repo", User: "root"}, false,
			session.Exec{Env: []string{"PATH=/opt/bin:/bin", "GREETING=hi", "GREETING=yo"}, Dir: "/root/repo", User: "root"}, "the caller's after, so they win; root's home resolved"},
		{"oci", session.Exec{Dir: "~/repo"}, false,
			session.Exec{Env: []string{"PATH=/opt/bin:/bin", "GREETING=hi"}, Dir: "~/repo", User: "app"}, "another user's home is the agent's to resolve"},
		{"oci", session.Exec{Shell: true}, true,
			session.Exec{Argv: []string{"/bin/tool", "--serve"}, Env: []string{"PATH=/opt/bin:/bin", "GREETING=hi"}, Dir: "/work", User: "app"}, "no command: the entrypoint and cmd"},
		{"oci", session.Exec{Argv: []string{"make"}}, true,
			session.Exec{Argv: []string{"make"}, Env: []string{"PATH=/opt/bin:/bin", "GREETING=hi"}, Dir: "/work", User: "app"}, "a command replaces both"},
		{"cmd", session.Exec{Shell: true}, true, session.Exec{Argv: []string{"python3"}}, "a cmd alone"},
		{"tiny", session.Exec{Shell: true, Env: []string{"A=1"}}, true, session.Exec{Shell: true, Env: []string{"A=1"}}, "an image without any: the shell"},
		{"broken", session.Exec{Env: []string{"A=1"}, Dir: "~"}, false, session.Exec{Env: []string{"A=1"}, Dir: "/root"}, "an image that cannot be read"},
	} {
		got := s.withImageDefaults(context.Background(), tc.image, tc.in, tc.imageCommand)
		if !slices.Equal(got.Env, tc.want.Env) || got.Dir != tc.want.Dir || got.User != tc.want.User ||
			!slices.Equal(got.Argv, tc.want.Argv) || got.Shell != tc.want.Shell {
			t.Errorf("%s (%s):\n%+v\nwant\n%+v", tc.image, tc.comment, got, tc.want)
		}
	}
}
