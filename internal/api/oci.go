package api

import (
	"path/filepath"
	"strings"

	"banger/rpc"
)

// The transports an OCI image reference may name, as skopeo names them.
const (
	OCIDocker        = "docker"         // docker://HOST/REPO:TAG or @sha256:…, a registry
	OCILayout        = "oci"            // oci:DIR[:TAG], an OCI image layout
	OCIDockerArchive = "docker-archive" // docker-archive:FILE, what docker save writes
	OCIArchive       = "oci-archive"    // oci-archive:FILE[:TAG], a tar of an OCI layout
)

// OCIImage is what an image made from an OCI image keeps of it: where it
// came from, and the config a container runtime would run it with. The
// image store keeps it in the image's manifest as it is here.
type OCIImage struct {
	Reference string `json:"reference"`
	// Digest is the manifest digest of the linux/amd64 image imported.
	Digest     string   `json:"digest"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
}

// OCIRef is a parsed OCI image reference. The client and the daemon both
// parse it: the client to make its paths absolute, the daemon to read it.
type OCIRef struct {
	Transport string
	// Path is the file or directory of the local transports.
	Path string
	// Name is the registry reference of docker://, or the tag of a local
	// transport ("" when none is given).
	Name string
}

// ParseOCIRef parses a reference in skopeo's syntax; anything else is an
// invalid_params error that names the four transports.
func ParseOCIRef(s string) (OCIRef, error) {
	bad := func(why string) error {
		return rpc.Errorf(rpc.CodeInvalidParams, "OCI reference %q %s; give docker://HOST/REPO:TAG (or @sha256:…), oci:DIR[:TAG], docker-archive:FILE or oci-archive:FILE", s, why)
	}
	transport, rest, ok := strings.Cut(s, ":")
	if !ok {
		return OCIRef{}, bad("names no transport")
	}
	switch transport {
	case OCIDocker:
		name, ok := strings.CutPrefix(rest, "//")
		if !ok || name == "" {
			return OCIRef{}, bad("is not docker://HOST/REPO:TAG")
		}
		return OCIRef{Transport: transport, Name: name}, nil
	case OCILayout, OCIDockerArchive, OCIArchive:
		// As skopeo: the path ends at the first ':', a tag may follow.
		path, tag, _ := strings.Cut(rest, ":")
		if path == "" {
			return OCIRef{}, bad("names no path")
		}
		return OCIRef{Transport: transport, Path: path, Name: tag}, nil
	}
	return OCIRef{}, bad("has an unknown transport " + transport)
}

// Abs is r with an absolute Path: the daemon reads it, from its own
// working directory.
func (r OCIRef) Abs() (OCIRef, error) {
	if r.Path == "" {
		return r, nil
	}
	p, err := filepath.Abs(r.Path)
	r.Path = p
	return r, err
}

// String is r in skopeo's syntax.
func (r OCIRef) String() string {
	if r.Transport == OCIDocker {
		return "docker://" + r.Name
	}
	s := r.Transport + ":" + r.Path
	if r.Name != "" {
		s += ":" + r.Name
	}
	return s
}
