package kernel

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"io"

	"github.com/ulikunitz/xz/lzma"
)

// The xz container is read here rather than with github.com/ulikunitz/xz's
// own xz.Reader because that reader accepts only a lone LZMA2 filter, and
// Linux compresses x86 kernels with the x86 BCJ filter in front of LZMA2
// (scripts/xz_wrap.sh: xz --x86 --lzma2). The container is a few headers;
// the LZMA2 decoding, the real work, is the library's.

const xzMagic = "\xfd7zXZ\x00"

const (
	xzFilterX86   = 0x04
	xzFilterLZMA2 = 0x21

	xzCheckNone   = 0x00
	xzCheckCRC32  = 0x01
	xzCheckCRC64  = 0x04
	xzCheckSHA256 = 0x0a
)

// unxz decodes the first xz stream of data (trailing bytes, such as the
// size Linux appends to its payload, are ignored) and returns at most
// limit bytes of output.
func unxz(data []byte, limit int64) ([]byte, error) {
	r := bytes.NewReader(data)
	var hdr [12]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("xz stream header: %w", err)
	}
	if string(hdr[:6]) != xzMagic {
		return nil, errors.New("not an xz stream")
	}
	if crc32.ChecksumIEEE(hdr[6:8]) != binary.LittleEndian.Uint32(hdr[8:12]) {
		return nil, errors.New("xz stream header: bad CRC32")
	}
	if hdr[6] != 0 || hdr[7]&0xf0 != 0 {
		return nil, fmt.Errorf("xz stream header: unsupported flags %#x%02x", hdr[6], hdr[7])
	}
	check := hdr[7]

	var out bytes.Buffer
	for {
		size, err := r.ReadByte()
		if err != nil {
			return nil, fmt.Errorf("xz block header: %w", err)
		}
		if size == 0 {
			// The index follows the last block; the data is complete.
			return out.Bytes(), nil
		}
		if err := unxzBlock(r, int(size), check, &out, limit); err != nil {
			return nil, err
		}
	}
}

// unxzBlock decodes one block whose header size byte was sizeByte.
func unxzBlock(r *bytes.Reader, sizeByte int, check byte, out *bytes.Buffer, limit int64) error {
	start := r.Size() - int64(r.Len()) - 1
	hlen := (sizeByte + 1) * 4
	h := make([]byte, hlen)
	h[0] = byte(sizeByte)
	if _, err := io.ReadFull(r, h[1:]); err != nil {
		return fmt.Errorf("xz block header: %w", err)
	}
	if crc32.ChecksumIEEE(h[:hlen-4]) != binary.LittleEndian.Uint32(h[hlen-4:]) {
		return errors.New("xz block header: bad CRC32")
	}
	hr := bytes.NewReader(h[2 : hlen-4])
	flags := h[1]
	if flags&0x3c != 0 {
		return fmt.Errorf("xz block header: unsupported flags %#x", flags)
	}
	if flags&0x40 != 0 { // compressed size present
		if _, err := readVLI(hr); err != nil {
			return err
		}
	}
	if flags&0x80 != 0 { // uncompressed size present
		if _, err := readVLI(hr); err != nil {
			return err
		}
	}
	var bcj, sawLZMA2 bool
	var bcjStart uint32
	var dictCap int64
	for i := 0; i <= int(flags&0x03); i++ {
		id, err := readVLI(hr)
		if err != nil {
			return err
		}
		plen, err := readVLI(hr)
		if err != nil {
			return err
		}
		if plen > uint64(hr.Len()) {
			return errors.New("xz block header: filter properties overrun")
		}
		props := make([]byte, plen)
		io.ReadFull(hr, props)
		last := i == int(flags&0x03)
		switch {
		case id == xzFilterX86 && !last && (plen == 0 || plen == 4):
			bcj = true
			if plen == 4 {
				bcjStart = binary.LittleEndian.Uint32(props)
			}
		case id == xzFilterLZMA2 && last && plen == 1:
			sawLZMA2 = true
			if dictCap, err = lzma.DecodeDictCap(props[0]); err != nil {
				return fmt.Errorf("xz LZMA2 filter: %w", err)
			}
		default:
			return fmt.Errorf("xz filter %#x is not supported (only x86 BCJ before LZMA2)", id)
		}
	}
	if !sawLZMA2 {
		return errors.New("xz block has no LZMA2 filter")
	}

	// The dictionary never needs to be larger than the output may be.
	dc := int(min(max(dictCap, lzma.MinDictCap), max(limit, lzma.MinDictCap)))
	lr, err := lzma.Reader2Config{DictCap: dc}.NewReader2(r)
	if err != nil {
		return fmt.Errorf("xz LZMA2 data: %w", err)
	}
	blockStart := out.Len()
	n, err := io.Copy(out, io.LimitReader(lr, limit-int64(blockStart)+1))
	if err != nil {
		return fmt.Errorf("xz LZMA2 data: %w", err)
	}
	if int64(blockStart)+n > limit {
		return fmt.Errorf("xz data larger than %d bytes", limit)
	}
	block := out.Bytes()[blockStart:]
	if bcj {
		unBCJx86(block, bcjStart)
	}

	// Block padding to four bytes, then the check of the uncompressed data.
	consumed := r.Size() - int64(r.Len()) - start
	if pad := (4 - consumed%4) % 4; pad > 0 {
		if _, err := r.Seek(pad, io.SeekCurrent); err != nil {
			return err
		}
	}
	var sum hash.Hash
	switch check {
	case xzCheckNone:
		return nil
	case xzCheckCRC32:
		sum = crc32.NewIEEE()
	case xzCheckCRC64:
		sum = crc64.New(crc64.MakeTable(crc64.ECMA))
	case xzCheckSHA256:
		sum = sha256.New()
	default:
		return fmt.Errorf("xz check type %#x is not supported", check)
	}
	sum.Write(block)
	want := make([]byte, sum.Size())
	if _, err := io.ReadFull(r, want); err != nil {
		return fmt.Errorf("xz block check: %w", err)
	}
	got := sum.Sum(nil)
	if check != xzCheckSHA256 {
		// CRCs are stored little-endian; hash.Hash sums are big-endian.
		for i, j := 0, len(got)-1; i < j; i, j = i+1, j-1 {
			got[i], got[j] = got[j], got[i]
		}
	}
	if !bytes.Equal(got, want) {
		return errors.New("xz block check does not match the data")
	}
	return nil
}

// readVLI reads the xz format's variable-length integer.
func readVLI(r io.ByteReader) (uint64, error) {
	var v uint64
	for i := 0; i < 9; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return 0, fmt.Errorf("xz header integer: %w", err)
		}
		v |= uint64(b&0x7f) << (7 * i)
		if b&0x80 == 0 {
			return v, nil
		}
	}
	return 0, errors.New("xz header integer too long")
}

// unBCJx86 undoes the x86 branch-call-jump filter in place over a whole
// buffer whose first byte is at stream position start: the relative
// targets of CALL and JMP that the encoder made absolute are made relative
// again. It is the decoder of XZ Embedded (xz_dec_bcj.c, public domain),
// applied to the whole block at once.
func unBCJx86(buf []byte, start uint32) {
	maskToAllowed := [8]bool{true, true, true, false, true, false, false, false}
	maskToBitNum := [8]uint32{0, 1, 2, 2, 3, 3, 3, 3}
	testMSByte := func(b byte) bool { return b == 0x00 || b == 0xff }

	if len(buf) <= 4 {
		return
	}
	size := len(buf) - 4
	prevPos := -1
	var prevMask uint32
	for i := 0; i < size; i++ {
		if buf[i]&0xfe != 0xe8 {
			continue
		}
		d := i - prevPos
		if d > 3 {
			prevMask = 0
		} else {
			prevMask = (prevMask << (d - 1)) & 7
			if prevMask != 0 {
				b := buf[i+4-int(maskToBitNum[prevMask])]
				if !maskToAllowed[prevMask] || testMSByte(b) {
					prevPos = i
					prevMask = prevMask<<1 | 1
					continue
				}
			}
		}
		prevPos = i
		if !testMSByte(buf[i+4]) {
			prevMask = prevMask<<1 | 1
			continue
		}
		src := binary.LittleEndian.Uint32(buf[i+1:])
		var dest uint32
		for {
			dest = src - (start + uint32(i) + 5)
			if prevMask == 0 {
				break
			}
			j := maskToBitNum[prevMask] * 8
			if !testMSByte(byte(dest >> (24 - j))) {
				break
			}
			src = dest ^ (1<<(32-j) - 1)
		}
		dest &= 0x01ffffff
		dest |= 0 - (dest & 0x01000000)
		binary.LittleEndian.PutUint32(buf[i+1:], dest)
		i += 4
	}
}
