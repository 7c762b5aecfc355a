package api

import (
	"context"

	"banger/rpc"
)

// image.build.begin builds an image from a recipe, as an operation of
// kind KindImageBuild whose result is the Image.
const (
	MethodImageBuildBegin = "image.build.begin"
	KindImageBuild        = "image.build"
)

// Recipe is what an image is built from: a base (a Debian suite, or an
// image), packages, files copied in and commands run, in that order.
// `banger image build --file` reads it as TOML with these field names.
type Recipe struct {
	// Distro is "debian/SUITE"; exactly one of Distro and From is given.
	Distro string `json:"distro,omitempty" toml:"distro"`
	// From is a banger image.
	From string `json:"from,omitempty" toml:"from"`
	// Packages are installed on the base: by mmdebstrap with Distro, by
	// apt-get in the build's VM with From.
	Packages []string `json:"packages,omitempty" toml:"packages"`
	// Copy is "HOST:GUEST" each: a host file or directory (an absolute
	// path in params; a recipe file's relative paths are from its
	// directory) and where it goes in the guest. A directory's content
	// goes into GUEST; a file becomes GUEST.
	Copy []string `json:"copy,omitempty" toml:"copy"`
	// Run are shell commands run in the build's VM (with the network),
	// in order, after the copies; one that fails fails the build.
	Run []string `json:"run,omitempty" toml:"run"`
}

// ImageBuild is the params of image.build.begin.
type ImageBuild struct {
	Name   string `json:"name"`
	Recipe Recipe `json:"recipe"`
	// CPUs and MemoryMiB are the build VM's (default: a VM's defaults);
	// they are not part of the recipe: the image is the same.
	CPUs      int `json:"cpus,omitempty"`
	MemoryMiB int `json:"memory_mib,omitempty"`
}

// BeginBuildImage begins building an image from a recipe.
func (c Client) BeginBuildImage(ctx context.Context, p ImageBuild) (Operation, error) {
	return rpc.CallFor[Operation](ctx, c, MethodImageBuildBegin, p)
}
