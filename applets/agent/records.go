package agent

import (
	"context"
	"io"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"banger/internal/agentlink"
	"banger/rpc"
)

// The agent's records reach the daemon's log: a host link reads them on
// agent.logs (agentlink.MethodLogs) as they are written. The console is
// slow (a serial port, emulated byte by byte) and is the kernel's: it gets
// the agent's records only until a host first reads them, and its
// warnings and errors always, for a guest whose host is gone.

// Bounds of the records kept while no host reads them (a boot, a daemon
// restart, a restored guest before its new link): the newest are kept.
const (
	maxQueuedRecords = 1024
	maxQueuedBytes   = 512 << 10
)

// recordQueue holds the agent's records for the host. One reader at a
// time takes them: a newer one (a new link) replaces the older.
type recordQueue struct {
	mu      sync.Mutex
	recs    [][]byte
	size    int // bytes in recs
	dropped int // records dropped since a reader last took some
	reader  uint64
	reading bool          // the reader is reading
	queued  uint64        // records ever queued
	sent    uint64        // the last of them written to a host
	flushed chan struct{} // closed (and replaced) when records are written
	read    bool          // a host has read records
	closing bool          // the guest powers off: deliver what is left, then stop
	wake    chan struct{} // closed (and replaced) when records come or the reader changes
}

func newRecordQueue() *recordQueue {
	return &recordQueue{wake: make(chan struct{}), flushed: make(chan struct{})}
}

// Write queues one record (zerolog writes a record per call). It never
// blocks on the host.
func (q *recordQueue) Write(p []byte) (int, error) {
	if len(p) > agentlink.MaxRecordLine {
		q.mu.Lock()
		q.dropped++
		q.mu.Unlock()
		return len(p), nil // the host would refuse it
	}
	rec := append([]byte(nil), p...)
	q.mu.Lock()
	defer q.mu.Unlock()
	q.queued++
	q.recs = append(q.recs, rec)
	q.size += len(rec)
	for len(q.recs) > maxQueuedRecords || q.size > maxQueuedBytes {
		q.size -= len(q.recs[0])
		q.recs[0] = nil
		q.recs = q.recs[1:]
		q.dropped++
	}
	q.notify()
	return len(p), nil
}

// notify wakes the reader; q.mu is held.
func (q *recordQueue) notify() {
	close(q.wake)
	q.wake = make(chan struct{})
}

// hostReads says whether a host has read the agent's records.
func (q *recordQueue) hostReads() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.read
}

// attach makes a new reader the only one, and returns its number.
func (q *recordQueue) attach() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.reader++
	q.read, q.reading = true, true
	q.notify()
	return q.reader
}

// detach records that reader r stopped.
func (q *recordQueue) detach(r uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.reader == r {
		q.reading = false
	}
}

// delivered records that the records up to queued were written to a host.
func (q *recordQueue) delivered(queued uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.sent = max(q.sent, queued)
	close(q.flushed)
	q.flushed = make(chan struct{})
}

// flush waits, at most d, until the records queued so far are written to
// the host's stream, when a host reads them: a record of an end (a
// command's) then reaches the host before the end's own answer, which may
// make the host end the guest.
func (q *recordQueue) flush(d time.Duration) {
	deadline := time.After(d)
	q.mu.Lock()
	target := q.queued
	for q.reading && q.sent < target {
		ch := q.flushed
		q.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			return
		}
		q.mu.Lock()
	}
	q.mu.Unlock()
}

// take returns the queued records for reader r, how many were dropped
// before them, the count of records queued up to them, and what to wait
// on when there are none; done when r is no longer the reader, or the
// queue is closing and empty.
func (q *recordQueue) take(r uint64) (recs [][]byte, dropped int, upTo uint64, wake <-chan struct{}, done bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.reader != r || q.closing && len(q.recs) == 0 {
		return nil, 0, 0, nil, true
	}
	recs, dropped = q.recs, q.dropped
	q.recs, q.size, q.dropped = nil, 0, 0
	return recs, dropped, q.queued, q.wake, false
}

// giveBack puts records a reader could not deliver back in front, for
// the next reader, within the bounds.
func (q *recordQueue) giveBack(recs [][]byte) {
	q.mu.Lock()
	defer q.mu.Unlock()
	all := append(recs, q.recs...)
	size := 0
	for _, r := range all {
		size += len(r)
	}
	for len(all) > maxQueuedRecords || size > maxQueuedBytes {
		size -= len(all[0])
		all = all[1:]
		q.dropped++
	}
	q.recs, q.size = all, size
}

// discard drops what is queued, without counting it as dropped.
func (q *recordQueue) discard() {
	q.mu.Lock()
	defer q.mu.Unlock()
	clear(q.recs)
	q.recs, q.size, q.dropped = nil, 0, 0
	q.sent = q.queued
}

// finish makes the reader deliver what is queued and stop: the guest
// is about to power off, and the call of a reader still reading would
// hold it up.
func (q *recordQueue) finish() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closing = true
	q.notify()
}

// serve delivers records to w until ctx ends, w fails (the host left: not
// an error of the call's), a newer reader attaches, or the queue
// finishes. Records it could not write stay queued, for the next host.
func (q *recordQueue) serve(ctx context.Context, log *zerolog.Logger, w io.Writer) {
	r := q.attach()
	defer q.detach(r)
	var buf []byte
	for {
		recs, dropped, upTo, wake, done := q.take(r)
		if done {
			return
		}
		if dropped > 0 {
			// Written through the logger, so it is queued, and sent next.
			log.Warn().Int("dropped", dropped).Msg("agent records dropped while no host read them")
		}
		if len(recs) == 0 {
			select {
			case <-wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		buf = buf[:0]
		for _, rec := range recs {
			buf = append(buf, rec...)
		}
		if _, err := w.Write(buf); err != nil {
			q.giveBack(recs)
			return
		}
		q.delivered(upTo)
	}
}

// recordFlushWait bounds the wait of a session's end for its record to be
// on its way: a host that does not read its records holds up no session
// for long.
const recordFlushWait = 500 * time.Millisecond

// flushRecords sends the records so far to the host before going on.
func (a *agent) flushRecords() {
	if a.records != nil {
		a.records.flush(recordFlushWait)
	}
}

// logs starts agent.logs: the session's output is the agent's records,
// one JSON object per line, until the host closes it.
func (a *agent) logs(context.Context, rpc.NoParams) (struct{}, rpc.StreamFunc, error) {
	return struct{}{}, func(ctx context.Context, conn net.Conn) error {
		// The host sends nothing on this stream: its end (or the link's)
		// ends the session.
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			io.Copy(io.Discard, conn)
			cancel()
		}()
		a.records.serve(ctx, &a.log, conn)
		return nil
	}, nil
}

// recordOutput is where the agent's logger writes: every record to the
// host's queue, and to the console those written before a host read any,
// and warnings and errors.
type recordOutput struct {
	console io.Writer
	queue   *recordQueue
}

func (o recordOutput) Write(p []byte) (int, error) {
	return o.WriteLevel(zerolog.NoLevel, p)
}

// WriteLevel is zerolog's LevelWriter: the record's level picks the
// console or not.
func (o recordOutput) WriteLevel(l zerolog.Level, p []byte) (int, error) {
	o.queue.Write(p)
	if l >= zerolog.WarnLevel && l != zerolog.NoLevel || !o.queue.hostReads() {
		o.console.Write(p)
	}
	return len(p), nil
}
