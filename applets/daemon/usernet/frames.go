package usernet

import (
	"bufio"
	"encoding/binary"
	"io"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// maxFrame is the largest frame taken: QEMU's stream netdev carries no
// offloads, so a guest's frames are at most its MTU and a header; this
// leaves room for a larger MTU.
const maxFrame = 65535 + header.EthernetMinimumSize

// frameReader reads QEMU's stream protocol: each frame is a 4-byte
// big-endian length, then the frame. The length is the guest's to pick:
// frames shorter than an Ethernet header or longer than maxFrame are
// skipped, never allocated.
type frameReader struct{ r *bufio.Reader }

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{r: bufio.NewReaderSize(r, 64<<10)}
}

// next returns the next frame that may be one.
func (f *frameReader) next() ([]byte, error) {
	for {
		var size [4]byte
		if _, err := io.ReadFull(f.r, size[:]); err != nil {
			return nil, err
		}
		n := binary.BigEndian.Uint32(size[:])
		if n < header.EthernetMinimumSize || n > maxFrame {
			if _, err := io.CopyN(io.Discard, f.r, int64(n)); err != nil {
				return nil, err
			}
			continue
		}
		frame := make([]byte, n)
		if _, err := io.ReadFull(f.r, frame); err != nil {
			return nil, err
		}
		return frame, nil
	}
}
