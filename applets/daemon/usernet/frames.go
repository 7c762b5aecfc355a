package usernet

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// maxFrame is the largest frame passed on: QEMU's stream netdev carries
// no offloads, so a guest's frames are at most its MTU and a header;
// this leaves room for a larger MTU.
const maxFrame = 65535 + header.EthernetMinimumSize

// guardFrames passes on the frames of QEMU's stream protocol (a 4-byte
// big-endian length, then the frame) that the switch can take: it reads
// an Ethernet header from whatever it is given, and a guest can send a
// runt, after which it serves the guest no more
// (TestHostileFramesAreDropped).
func guardFrames(c net.Conn) net.Conn {
	return &guardedConn{Conn: c, r: bufio.NewReaderSize(c, 64<<10)}
}

type guardedConn struct {
	net.Conn
	r       *bufio.Reader
	pending []byte // the rest of the frame being read, with its length
}

func (c *guardedConn) Read(p []byte) (int, error) {
	for len(c.pending) == 0 {
		var size [4]byte
		if _, err := io.ReadFull(c.r, size[:]); err != nil {
			return 0, err
		}
		n := binary.BigEndian.Uint32(size[:])
		if n < header.EthernetMinimumSize || n > maxFrame {
			if _, err := io.CopyN(io.Discard, c.r, int64(n)); err != nil {
				return 0, err
			}
			continue
		}
		frame := make([]byte, 4+n)
		copy(frame, size[:])
		if _, err := io.ReadFull(c.r, frame[4:]); err != nil {
			return 0, err
		}
		c.pending = frame
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}
