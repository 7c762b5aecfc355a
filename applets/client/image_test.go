package client

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOCIRef: the client makes a local transport's path absolute (the
// daemon reads it from its own directory), keeps a registry reference as
// it is, and refuses what is no reference with a usage error naming the
// transports.
func TestOCIRef(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		"oci:lay:v1":                  "oci:" + filepath.Join(wd, "lay") + ":v1",
		"docker-archive:img.tar":      "docker-archive:" + filepath.Join(wd, "img.tar"),
		"oci-archive:/abs/img.tar":    "oci-archive:/abs/img.tar",
		"docker://127.0.0.1:5000/a:b": "docker://127.0.0.1:5000/a:b",
	} {
		if got, err := ociRef(in); err != nil || got != want {
			t.Errorf("ociRef(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	_, err = ociRef("alpine")
	if _, exit := classify(err); err == nil || exit != ExitUsage || !strings.Contains(err.Error(), "docker-archive:FILE") {
		t.Errorf("ociRef(alpine) = %v; want a usage error naming the transports", err)
	}
}
