package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// syncBuffer is a host's end of the stream, read by the test while the
// queue writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	err error // what writes fail with
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) lines() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Split(strings.TrimSuffix(b.buf.String(), "\n"), "\n")
}

func (b *syncBuffer) waitFor(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l := b.lines()
		if len(l) >= n && l[0] != "" {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d lines, want %d: %q", len(l), n, l)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Records made while no host reads are kept, the newest within bounds,
// with a count of the rest, and reach the host that comes; a newer
// host's reader replaces the older; what a failed write held goes to the
// next.
func TestRecordQueue(t *testing.T) {
	q := newRecordQueue()
	log := zerolog.New(q)
	for i := range maxQueuedRecords + 10 {
		fmt.Fprintf(q, "{\"i\":%d}\n", i)
	}
	first := &syncBuffer{}
	ctx := context.Background()
	done := make(chan struct{})
	go func() { q.serve(ctx, &log, first); close(done) }()
	got := first.waitFor(t, maxQueuedRecords+1)
	if got[0] != `{"i":10}` {
		t.Errorf("the oldest kept: %s, want the 11th", got[0])
	}
	if last := got[len(got)-1]; !strings.Contains(last, `"dropped":10`) {
		t.Errorf("no count of the dropped: %s", last)
	}

	// A new host: the first reader stops, and the new one gets the rest.
	second := &syncBuffer{}
	go q.serve(ctx, &log, second)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the first reader did not stop for the second")
	}
	fmt.Fprintln(q, `{"to":"second"}`)
	if got := second.waitFor(t, 1); got[0] != `{"to":"second"}` {
		t.Errorf("the second host got %q", got)
	}

	// A host that went away: its records wait for the next.
	second.mu.Lock()
	second.err = errors.New("gone")
	second.mu.Unlock()
	fmt.Fprintln(q, `{"to":"third"}`)
	time.Sleep(50 * time.Millisecond)
	third := &syncBuffer{}
	go q.serve(ctx, &log, third)
	if got := third.waitFor(t, 1); got[0] != `{"to":"third"}` {
		t.Errorf("the third host got %q", got)
	}
}

// flush returns once what was queued is written, and at once when no host
// reads; discard drops a snapshot's records; finish delivers the rest and
// ends the reader.
func TestRecordQueueFlushDiscardFinish(t *testing.T) {
	q := newRecordQueue()
	start := time.Now()
	fmt.Fprintln(q, `{"n":1}`)
	q.flush(5 * time.Second)
	if time.Since(start) > time.Second {
		t.Errorf("flush without a host waited %v", time.Since(start))
	}
	q.discard()
	fmt.Fprintln(q, `{"n":2}`)
	pr, pw := io.Pipe()
	log := zerolog.Nop()
	done := make(chan struct{})
	go func() { q.serve(context.Background(), &log, pw); pw.Close(); close(done) }()
	lines := make(chan string, 8)
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := pr.Read(b)
			if n > 0 {
				lines <- string(b[:n])
			}
			if err != nil {
				close(lines)
				return
			}
		}
	}()
	if got := <-lines; got != "{\"n\":2}\n" {
		t.Errorf("after a discard the host got %q", got)
	}
	fmt.Fprintln(q, `{"n":3}`)
	flushed := make(chan struct{})
	go func() { q.flush(5 * time.Second); close(flushed) }()
	if got := <-lines; got != "{\"n\":3}\n" {
		t.Errorf("got %q", got)
	}
	select {
	case <-flushed:
	case <-time.After(5 * time.Second):
		t.Error("flush did not return once its records were written")
	}
	fmt.Fprintln(q, `{"n":4}`)
	q.finish()
	if got := <-lines; got != "{\"n\":4}\n" {
		t.Errorf("finish did not deliver the last: %q", got)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("the reader did not end at finish")
	}
}

// The console gets the records until a host reads them, and then only
// warnings and errors.
func TestRecordOutputConsole(t *testing.T) {
	var console bytes.Buffer
	q := newRecordQueue()
	log := zerolog.New(recordOutput{console: &console, queue: q})
	log.Info().Msg("boot")
	q.attach()
	log.Info().Msg("call")
	log.Warn().Msg("trouble")
	c := console.String()
	if !strings.Contains(c, "boot") || strings.Contains(c, "call") || !strings.Contains(c, "trouble") {
		t.Errorf("console: %s", c)
	}
}
