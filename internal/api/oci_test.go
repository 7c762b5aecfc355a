package api

import (
	"strings"
	"testing"
)

func TestParseOCIRef(t *testing.T) {
	good := map[string]OCIRef{
		"docker://127.0.0.1:5000/a/b:v1":                 {Transport: OCIDocker, Name: "127.0.0.1:5000/a/b:v1"},
		"docker://h/r@sha256:" + strings.Repeat("a", 64): {Transport: OCIDocker, Name: "h/r@sha256:" + strings.Repeat("a", 64)},
		"oci:/x/lay":             {Transport: OCILayout, Path: "/x/lay"},
		"oci:/x/lay:v2":          {Transport: OCILayout, Path: "/x/lay", Name: "v2"},
		"docker-archive:img.tar": {Transport: OCIDockerArchive, Path: "img.tar"},
		"oci-archive:/t/img.tar": {Transport: OCIArchive, Path: "/t/img.tar"},
	}
	for in, want := range good {
		got, err := ParseOCIRef(in)
		if err != nil || got != want {
			t.Errorf("ParseOCIRef(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if got.String() != in {
			t.Errorf("String of %q = %q", in, got.String())
		}
	}
	for _, in := range []string{"", "alpine", "busybox:latest", "docker:alpine", "docker://", "oci:", "dir:/x", "containers-storage:x"} {
		_, err := ParseOCIRef(in)
		if err == nil || !strings.Contains(err.Error(), "oci-archive:FILE") {
			t.Errorf("ParseOCIRef(%q) = %v; want an error naming the transports", in, err)
		}
	}
}
