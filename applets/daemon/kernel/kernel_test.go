package kernel

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"banger/applets/daemon/imagestore"
)

// hostKernel is the host kernel the daemon's default image is made of
// (the newest by version), or the test is skipped.
func hostKernel(t *testing.T) string {
	t.Helper()
	k, err := imagestore.HostKernel(imagestore.DefaultBootDir)
	if err != nil {
		t.Skip(err)
	}
	return k
}

func TestExtractHostKernel(t *testing.T) {
	src := hostKernel(t)
	dir := t.TempDir()
	dst := filepath.Join(dir, "vmlinux")
	start := time.Now()
	info, err := Extract(src, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %+v in %s", src, info, time.Since(start).Round(time.Millisecond))
	if info.Format == FormatELF {
		t.Errorf("%s is a compressed kernel, got format %s", src, info.Format)
	}
	// A wrong x86 BCJ decode would still give a valid ELF; the xz
	// block's check over the decoded bytes is what catches it, and
	// Extract succeeded.
	f, err := elf.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		t.Errorf("vmlinux is %v %v", f.Machine, f.Type)
	}
	if !info.PVH {
		t.Error("no PVH entry note: QEMU cannot boot this vmlinux directly")
	}
	if want := strings.TrimPrefix(filepath.Base(src), "vmlinuz-"); info.Release != want {
		t.Errorf("release %q, want %q", info.Release, want)
	}
	if r, err := Release(src); err != nil || r != info.Release {
		t.Errorf("Release(bzImage) = %q, %v", r, err)
	}
	if r, err := Release(dst); err != nil || r != info.Release {
		t.Errorf("Release(vmlinux) = %q, %v", r, err)
	}

	// An uncompressed vmlinux is taken as it is.
	again := filepath.Join(dir, "again")
	info2, err := Extract(dst, again)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(dst)
	b, _ := os.ReadFile(again)
	if info2.Format != FormatELF || !bytes.Equal(a, b) || !info2.PVH {
		t.Errorf("extracting a vmlinux: %+v, identical %v", info2, bytes.Equal(a, b))
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("temporary files left: %v", entries)
	}
}

func TestExtractRejectsGarbage(t *testing.T) {
	dir := t.TempDir()
	rnd := make([]byte, 1<<16)
	rand.New(rand.NewSource(1)).Read(rnd)
	cases := map[string][]byte{
		"empty":  nil,
		"random": rnd,
		"text":   []byte("#!/bin/sh\necho not a kernel\n"),
		// Magic bytes followed by nothing decodable.
		"false magic": append([]byte("junk"+xzMagic), 1, 2, 3),
		"gzip of text": func() []byte {
			var b bytes.Buffer
			w := gzip.NewWriter(&b)
			w.Write([]byte("hello"))
			w.Close()
			return b.Bytes()
		}(),
		"arm64 ELF": func() []byte { e := tinyELF(); binary.LittleEndian.PutUint16(e[18:], uint16(elf.EM_AARCH64)); return e }(),
	}
	for name, data := range cases {
		src := filepath.Join(dir, "k")
		os.WriteFile(src, data, 0o644)
		_, err := Extract(src, filepath.Join(dir, "out"))
		if !errors.Is(err, ErrNotKernel) {
			t.Errorf("%s: %v, want ErrNotKernel", name, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "out")); err == nil {
			t.Errorf("%s: output written", name)
		}
	}
	if _, err := Extract(filepath.Join(dir, "missing"), filepath.Join(dir, "out")); err == nil {
		t.Error("a missing file extracted")
	}
	// A truncated bzImage.
	if k, _ := filepath.Glob("/boot/vmlinuz-*"); len(k) > 0 {
		data, _ := os.ReadFile(k[0])
		os.WriteFile(filepath.Join(dir, "cut"), data[:len(data)/2], 0o644)
		if _, err := Extract(filepath.Join(dir, "cut"), filepath.Join(dir, "out")); err == nil {
			t.Error("half a bzImage extracted")
		}
	}
}

// tinyELF is a minimal x86-64 executable: an ELF header and one PT_LOAD
// program header covering the file, with a PVH note.
func tinyELF() []byte {
	note := make([]byte, 12+4+4)
	binary.LittleEndian.PutUint32(note[0:], 4) // namesz "Xen\0"
	binary.LittleEndian.PutUint32(note[4:], 4) // descsz
	binary.LittleEndian.PutUint32(note[8:], xenElfnotePhys32Entry)
	copy(note[12:], "Xen\x00")
	const ehsize, phsize = 64, 56
	b := make([]byte, ehsize+2*phsize+len(note)+64)
	copy(b, elf.ELFMAG)
	b[4], b[5], b[6] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)
	le := binary.LittleEndian
	le.PutUint16(b[16:], uint16(elf.ET_EXEC))
	le.PutUint16(b[18:], uint16(elf.EM_X86_64))
	le.PutUint32(b[20:], uint32(elf.EV_CURRENT))
	le.PutUint64(b[32:], ehsize) // phoff
	le.PutUint16(b[52:], ehsize)
	le.PutUint16(b[54:], phsize)
	le.PutUint16(b[56:], 2) // phnum
	ph := b[ehsize:]
	le.PutUint32(ph[0:], uint32(elf.PT_LOAD))
	le.PutUint64(ph[32:], uint64(len(b))) // filesz
	ph = b[ehsize+phsize:]
	le.PutUint32(ph[0:], uint32(elf.PT_NOTE))
	le.PutUint64(ph[8:], ehsize+2*phsize) // offset
	le.PutUint64(ph[32:], uint64(len(note)))
	copy(b[ehsize+2*phsize:], note)
	copy(b[ehsize+2*phsize+len(note):], "Linux version 9.9.9-test (someone@somewhere) #1\x00")
	return b
}

func TestUncompressFormats(t *testing.T) {
	kernel := tinyELF()
	if info, err := checkELF(kernel); err != nil || !info.PVH || info.Release != "9.9.9-test" {
		t.Fatalf("tinyELF: %+v, %v", info, err)
	}
	compress := map[Format]func([]byte) []byte{
		FormatGzip: func(b []byte) []byte {
			var out bytes.Buffer
			w, _ := gzip.NewWriterLevel(&out, gzip.BestCompression)
			w.Write(b)
			w.Close()
			return out.Bytes()
		},
		FormatZstd: func(b []byte) []byte {
			e, _ := zstd.NewWriter(nil)
			return e.EncodeAll(b, nil)
		},
		FormatXZ: func(b []byte) []byte {
			var out bytes.Buffer
			w, _ := xz.WriterConfig{CheckSum: xz.CRC64}.NewWriter(&out)
			w.Write(b)
			w.Close()
			return out.Bytes()
		},
	}
	for format, fn := range compress {
		// As Linux packs it: something before, the size after.
		blob := append([]byte("\x00\x01setup code, then the payload:"), fn(kernel)...)
		blob = binary.LittleEndian.AppendUint32(blob, uint32(len(kernel)))
		out, info, err := Uncompress(blob)
		if err != nil {
			t.Errorf("%s: %v", format, err)
			continue
		}
		if info.Format != format || !bytes.Equal(out, kernel) || !info.PVH {
			t.Errorf("%s: format %s, identical %v, %+v", format, info.Format, bytes.Equal(out, kernel), info)
		}
	}
}

// TestBzImageHeader: the payload is found through the setup header.
func TestBzImageHeader(t *testing.T) {
	kernel := tinyELF()
	var payload bytes.Buffer
	w := gzip.NewWriter(&payload)
	w.Write(kernel)
	w.Close()
	img := make([]byte, 5*512) // setup_sects = 4: protected mode at 2560
	img[bzSetupSects] = 4
	copy(img[bzHeaderMagic:], "HdrS")
	binary.LittleEndian.PutUint16(img[bzVersion:], 0x20f)
	binary.LittleEndian.PutUint32(img[bzPayloadOffset:], 16)
	binary.LittleEndian.PutUint32(img[bzPayloadLength:], uint32(payload.Len()+4))
	binary.LittleEndian.PutUint16(img[bzKernelVersion:], 0x400-0x200)
	copy(img[0x400:], "9.9.9-hdr (builder) #1\x00")
	img = append(img, make([]byte, 16)...)
	img = append(img, payload.Bytes()...)
	img = binary.LittleEndian.AppendUint32(img, uint32(len(kernel)))
	if p, ok := bzImagePayload(img); !ok || !bytes.HasPrefix(p, payload.Bytes()[:8]) {
		t.Fatalf("payload not found through the header")
	}
	out, info, err := Uncompress(img)
	if err != nil || !bytes.Equal(out, kernel) || info.Format != FormatGzip {
		t.Errorf("Uncompress: %+v, %v", info, err)
	}
	if r := bzImageRelease(img); r != "9.9.9-hdr" {
		t.Errorf("release %q", r)
	}
}

// TestXZx86BCJ checks the container and the x86 filter against the xz
// tool, on an x86 binary full of CALLs (the test binary itself).
func TestXZx86BCJ(t *testing.T) {
	if _, err := exec.LookPath("xz"); err != nil {
		t.Skip("xz is not installed")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	want = want[:min(len(want), 3<<20)]
	for _, args := range [][]string{
		{"--x86", "--lzma2=preset=1,dict=1MiB", "--check=crc32"},
		{"--x86", "--lzma2=preset=1", "--check=crc64"},
		{"--x86", "--lzma2=preset=1", "--check=sha256"},
		{"--lzma2=preset=1", "--check=none"},
		{"--x86", "--lzma2=preset=1", "--check=crc32", "--block-size=1MiB"},
	} {
		cmd := exec.Command("xz", append([]string{"-c"}, args...)...)
		cmd.Stdin = bytes.NewReader(want)
		packed, err := cmd.Output()
		if err != nil {
			t.Fatalf("xz %v: %v", args, err)
		}
		got, err := unxz(append(packed, 1, 2, 3, 4), int64(len(want)))
		if err != nil {
			t.Errorf("xz %v: %v", args, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("xz %v: output differs", args)
		}
		// A flipped byte in the data is caught by the check (or breaks
		// the stream).
		if !strings.Contains(strings.Join(args, " "), "none") {
			bad := append([]byte{}, packed...)
			bad[len(bad)/2] ^= 0x40
			if _, err := unxz(bad, int64(len(want))); err == nil {
				t.Errorf("xz %v: corruption not detected", args)
			}
		}
		if _, err := unxz(packed, int64(len(want))-1); err == nil {
			t.Errorf("xz %v: output limit not enforced", args)
		}
	}
}

func FuzzUncompress(f *testing.F) {
	f.Add(tinyELF())
	f.Add(append([]byte("x"+xzMagic), 0, 1, 0x69, 0x22, 0xde, 0x36, 2, 1, 4, 0))
	f.Add([]byte{0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0})
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0})
	f.Add([]byte("BZh91AY&SY"))
	f.Fuzz(func(t *testing.T, data []byte) {
		out, info, err := Uncompress(data)
		if err == nil && (len(out) == 0 || info.Size != int64(len(out))) {
			t.Errorf("success without a kernel: %+v", info)
		}
	})
}
