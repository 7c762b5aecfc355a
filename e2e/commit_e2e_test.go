package e2e_test

import (
	"strings"
	"testing"

	"banger/internal/api"
)

// TestImageCommit is "provision once, start fresh many times": a file
// written in a running VM is in the image committed from it, and in a
// new VM of that image, which has a machine id of its own; the running
// VM was paused for the copy and runs on. A stopped VM commits too, and
// the refusals come at once with their codes.
func TestImageCommit(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()
	s.banger("vm", "create", "--name", "base").want(t, 0)
	s.banger("vm", "exec", "base", "--", "sh", "-c", "echo provisioned > /etc/provisioned").want(t, 0)
	before := s.banger("vm", "exec", "base", "--", "cat", "/etc/machine-id").want(t, 0).stdout

	commit := s.banger("image", "commit", "base", "provisioned").want(t, 0)
	if !strings.Contains(commit.stderr, "commit done") {
		t.Errorf("no stage line for the commit: %q", commit.stderr)
	}
	// The VM paused for the copy runs on, its guest as it was.
	if got := s.banger("vm", "exec", "base", "--", "cat", "/etc/provisioned").want(t, 0).stdout; got != "provisioned\n" {
		t.Errorf("the committed VM's file after the commit: %q", got)
	}
	var im api.Image
	s.banger("image", "show", "--json", "provisioned").want(t, 0).json(t, &im)
	if len(im.Notes) == 0 || !strings.Contains(im.Notes[0], "committed from vm base") {
		t.Errorf("committed image's notes: %q", im.Notes)
	}

	run := s.banger("vm", "run", "--rm", "--image", "provisioned", "--", "sh", "-c", "cat /etc/provisioned; cat /etc/machine-id").want(t, 0).stdout
	if !strings.HasPrefix(run, "provisioned\n") {
		t.Fatalf("a VM of the committed image: %q; want the file the first VM wrote", run)
	}
	if id := strings.TrimPrefix(run, "provisioned\n"); id == before || len(strings.TrimSpace(id)) != 32 {
		t.Errorf("machine id %q in the new VM; want one of its own, not the committed VM's %q", id, before)
	}

	// A stopped VM, committed from a VM of a committed image.
	s.banger("vm", "create", "--name", "second", "--image", "provisioned").want(t, 0)
	s.banger("vm", "exec", "second", "--", "sh", "-c", "echo again >> /etc/provisioned").want(t, 0)
	s.banger("vm", "stop", "second").want(t, 0)
	s.banger("image", "commit", "-q", "second", "twice").want(t, 0)
	if got := s.banger("vm", "run", "--rm", "--image", "twice", "--", "cat", "/etc/provisioned").want(t, 0).stdout; got != "provisioned\nagain\n" {
		t.Errorf("a VM of the image committed from a stopped VM: %q", got)
	}

	// Refused at once: a taken name (already exists), no such VM (not
	// found), a bad name (invalid).
	if r := s.banger("image", "commit", "base", "twice").want(t, 5); !strings.Contains(r.stderr, "already exists") {
		t.Errorf("a taken name: %q", r.stderr)
	}
	s.banger("image", "commit", "nobody", "fresh").want(t, 4)
	s.banger("image", "commit", "base", "Bad_Name").want(t, 2)
	// The committed images are in use: they cannot be deleted under the
	// VM made of them, and can once it is gone.
	s.banger("vm", "delete", "second").want(t, 0)
	s.banger("image", "delete", "twice").want(t, 0)
}
