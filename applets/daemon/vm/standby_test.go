package vm

import (
	"errors"
	"strings"
	"testing"

	"banger/applets/daemon/warm"
)

// A standby fits while its guest's memory and QEMU's leave the floor
// available; a host whose memory cannot be read gets none.
func TestStandbyFitsTheHostsMemory(t *testing.T) {
	avail := int64(1 << 30)
	var readErr error
	s := &Service{warm: &warmStarts{pools: newStandbyPools(1), minFree: 512 << 20,
		memAvailable: func() (int64, error) { return avail, readErr }}}
	key := warm.Key{Image: "img", MemoryMiB: 256}
	if why := s.standbyFits(key); why != "" {
		t.Errorf("1 GiB available, 256 MiB guest, 512 MiB floor: %q", why)
	}
	avail = 800 << 20
	if why := s.standbyFits(key); !strings.Contains(why, "800 MiB of memory available") || !strings.Contains(why, "512 MiB kept free") {
		t.Errorf("800 MiB available: %q", why)
	}
	readErr = errors.New("no /proc")
	if why := s.standbyFits(key); !strings.Contains(why, "unknown") {
		t.Errorf("unreadable: %q", why)
	}
}
