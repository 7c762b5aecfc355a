package imagestore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

// hashLayouts writes the same content three ways — dense, with holes
// where it is zero, and with a hole and a data extent that start inside
// a block — and checks that each hash sees the content, not the layout.
func TestHashFileIsLayoutFree(t *testing.T) {
	dir := t.TempDir()
	const size = 5*holeUnit + 12345 // an unaligned end
	content := make([]byte, size)
	rand.Read(content[holeUnit : holeUnit+100])      // data at a block's start
	rand.Read(content[3*holeUnit+4096 : 4*holeUnit]) // data starting inside a block
	rand.Read(content[size-10:])
	dense := filepath.Join(dir, "dense")
	if err := os.WriteFile(dense, content, 0o644); err != nil {
		t.Fatal(err)
	}
	sparse := filepath.Join(dir, "sparse")
	f, err := os.Create(sparse)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]int{{holeUnit, holeUnit + 100}, {3*holeUnit + 4096, 4 * holeUnit}, {size - 10, size}} {
		if _, err := f.WriteAt(content[r[0]:r[1]], int64(r[0])); err != nil {
			t.Fatal(err)
		}
	}
	f.Truncate(size)
	f.Close()

	want := sha256.Sum256(content)
	ctx := context.Background()
	var blockSums []string
	for _, file := range []string{dense, sparse} {
		n, sum, err := hashFile(ctx, file, HashFile, false)
		if err != nil || n != size || sum != hex.EncodeToString(want[:]) {
			t.Errorf("%s: HashFile %d %s %v; want the sha256 of its bytes", file, n, sum, err)
		}
		_, sum, err = hashFile(ctx, file, HashNonzeroBlocks, false)
		if err != nil {
			t.Fatal(err)
		}
		blockSums = append(blockSums, sum)
	}
	// Punching holes on the way changes the layout, not the hashes.
	n, punched, err := hashFile(ctx, dense, HashNonzeroBlocks, true)
	if err != nil || n != size {
		t.Fatal(n, err)
	}
	if blockSums[0] != blockSums[1] || punched != blockSums[0] {
		t.Errorf("HashNonzeroBlocks differs by layout: dense %s, sparse %s, punched %s", blockSums[0], blockSums[1], punched)
	}
	if got, _ := os.ReadFile(dense); string(got) != string(content) {
		t.Error("punching holes changed the content")
	}
	// One byte changed, in data or in what was zeros, changes the hash.
	for _, at := range []int{holeUnit + 5, 2 * holeUnit} {
		c := append([]byte(nil), content...)
		c[at] ^= 1
		other := filepath.Join(dir, "other")
		os.WriteFile(other, c, 0o644)
		if _, sum, _ := hashFile(ctx, other, HashNonzeroBlocks, false); sum == blockSums[0] {
			t.Errorf("a byte changed at %d: same hash", at)
		}
	}
	// The size is hashed: trailing zeros count.
	os.Truncate(sparse, size+1)
	if _, sum, _ := hashFile(ctx, sparse, HashNonzeroBlocks, false); sum == blockSums[0] {
		t.Error("a longer file of the same blocks: same hash")
	}
	if _, _, err := hashFile(ctx, sparse, "md5", false); err == nil {
		t.Error("an unknown algorithm was taken")
	}
}
