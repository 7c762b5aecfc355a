package daemon

import (
	"strings"
	"testing"
	"time"

	"banger/rpc"
)

// A claim during a brief one (a guest's end being recorded) waits for it;
// during any other it is a conflict at once.
func TestClaimWaitsForABriefOne(t *testing.T) {
	s, _, _ := testService(t)
	release, err := s.claimBrief("box", "noticing that it exited")
	if err != nil {
		t.Fatal(err)
	}
	go func() { time.Sleep(100 * time.Millisecond); release() }()
	start := time.Now()
	second, err := s.claim("box", "being started")
	if err != nil || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("a claim during a brief one: %v after %s", err, time.Since(start))
	}
	if _, err := s.claim("box", "being stopped"); rpc.CodeOf(err) != rpc.CodeConflict || !strings.Contains(err.Error(), "being started") {
		t.Errorf("a claim during another: %v", err)
	}
	second()
}
