package session

import (
	"encoding/binary"
	"io"
	"sync"
)

// ExitWatch is the guest-to-host leg of a relay that passes frames
// through without decoding them (the daemon between a client and an
// agent): it writes everything to w unchanged, and follows the frame
// boundaries only to tell when the guest's Exit frame has come whole.
// The guest sends it once the command has ended, so from then on the
// session is over but for the guest's close, and a host that leaves
// leaves nothing to kill.
type ExitWatch struct {
	w io.Writer

	hdr  [headerSize]byte
	nhdr int    // bytes of hdr filled for the frame being read
	left uint32 // payload bytes of the current frame not seen yet

	once sync.Once
	done chan struct{}
}

// NewExitWatch relays the guest's frames to w.
func NewExitWatch(w io.Writer) *ExitWatch {
	return &ExitWatch{w: w, done: make(chan struct{})}
}

// Write follows the frames in p, then writes it to the host. The Exit
// frame is noted before it is written: a host that reads it may leave at
// once, and must find it noted.
func (x *ExitWatch) Write(p []byte) (int, error) {
	x.follow(p)
	return x.w.Write(p)
}

// Exited is closed once the guest's Exit frame has come whole.
func (x *ExitWatch) Exited() <-chan struct{} { return x.done }

func (x *ExitWatch) follow(p []byte) {
	for len(p) > 0 {
		if x.nhdr < headerSize {
			c := copy(x.hdr[x.nhdr:], p)
			x.nhdr += c
			p = p[c:]
			if x.nhdr < headerSize {
				return
			}
			x.left = binary.BigEndian.Uint32(x.hdr[1:])
		}
		c := uint32(min(uint64(len(p)), uint64(x.left)))
		x.left -= c
		p = p[c:]
		if x.left > 0 {
			return
		}
		if Kind(x.hdr[0]) == Exit {
			x.once.Do(func() { close(x.done) })
		}
		x.nhdr = 0
	}
}
