package agentlink

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"banger/internal/lazyre"
	"banger/internal/printable"
	"banger/rpc"
)

// The agent's log records reach the daemon's log through the link: the
// host opens agent.logs once the agent is ready, and the agent writes its
// records there, one JSON object per line, as they are made (and those
// made while no host read them, within bounds). The guest is untrusted,
// so each record is checked before the daemon writes it: a line is
// bounded, a record has a known level and a bounded, printable message
// and fields of simple shapes and simple names, its time is the guest's
// only within a few seconds before the host read it, and the op and trace
// it names are taken only when the host itself made that call on this
// link: a guest cannot put records into another VM's or another command's
// trace. A guest that writes faster than the rate is cut off, with a
// count of what was dropped.

// MethodLogs is the agent's stream of log records.
const MethodLogs = "agent.logs"

// MaxRecordLine bounds one record, its newline included.
const MaxRecordLine = 8 << 10

// Bounds of a record's parts.
const (
	maxRecordMsg    = 256
	maxRecordString = 1024
	maxRecordFields = 32
	maxRecordList   = 64
	maxListString   = 256
	// maxRecordSkew is how far before its arrival a record's own time
	// is believed; a record from outside it gets its arrival time.
	maxRecordSkew = 5 * time.Second
	// recordRate and recordBurst bound the records a guest gets written
	// into the daemon's log.
	recordRate  = 200
	recordBurst = 1000
	// maxTrackedCalls bounds the calls whose op id a link remembers, so
	// that their records are attributed: the oldest are forgotten first.
	maxTrackedCalls = 1024
)

var recordKey = lazyre.New(`^[a-z][a-z0-9_]{0,31}$`)

// GuestRecord is one of the agent's records as the host passes it on:
// checked, bounded, with the host's op id and trace id of the call that
// caused it, if it was one of this link's.
type GuestRecord struct {
	Time    time.Time
	Level   zerolog.Level
	Msg     string
	OpID    string
	TraceID string
	Method  string
	Fields  []GuestField // sorted by key
}

// GuestField is one field of a record: a string, a float64, a bool or a
// []string.
type GuestField struct {
	Key   string
	Value any
}

// Log writes r to log (a logger without a timestamp of its own: the
// record has its time) with the VM's name.
func (r GuestRecord) Log(log *zerolog.Logger, vm string) {
	ev := log.WithLevel(r.Level)
	if ev == nil {
		return
	}
	ev.Time(zerolog.TimestampFieldName, r.Time).Str("vm", vm)
	if r.OpID != "" {
		ev.Str("op_id", r.OpID).Str("trace_id", r.TraceID)
	}
	if r.Method != "" {
		ev.Str("method", r.Method)
	}
	for _, f := range r.Fields {
		switch v := f.Value.(type) {
		case string:
			ev.Str(f.Key, v)
		case float64:
			ev.Float64(f.Key, v)
		case bool:
			ev.Bool(f.Key, v)
		case []string:
			ev.Strs(f.Key, v)
		}
	}
	ev.Msg(r.Msg)
}

// calls are the op ids of the calls a link made, with their trace ids.
type calls struct {
	mu    sync.Mutex
	trace map[string]string
	order []string
}

// add remembers the op id and trace of the call ctx belongs to.
func (c *calls) add(ctx context.Context) {
	op := rpc.OpIDFrom(ctx)
	if op == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.trace == nil {
		c.trace = map[string]string{}
	}
	if _, ok := c.trace[op]; ok {
		return
	}
	c.trace[op] = rpc.TraceIDFrom(ctx)
	c.order = append(c.order, op)
	if len(c.order) > maxTrackedCalls {
		delete(c.trace, c.order[0])
		c.order = c.order[1:]
	}
}

// lookup returns the trace of the link's call op.
func (c *calls) lookup(op string) (trace string, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	trace, ok = c.trace[op]
	return trace, ok
}

// CopyRecords opens the agent's stream of records and passes each, checked,
// to out until the stream or the link ends. An agent that has no such
// stream (an older one) fails it at once.
func (l *Link) CopyRecords(ctx context.Context, out func(GuestRecord)) error {
	st, err := l.OpenSession(ctx, MethodLogs, nil)
	if err != nil {
		return err
	}
	defer st.Close()
	// A yamux stream's Close only half-closes it: a deadline ends the read.
	stop := context.AfterFunc(ctx, func() { st.SetReadDeadline(time.Now()) })
	defer stop()
	r := recordReader{br: bufio.NewReaderSize(st, MaxRecordLine), calls: &l.calls, limit: rate.NewLimiter(recordRate, recordBurst), out: out}
	return r.run()
}

// recordReader checks the lines of a record stream.
type recordReader struct {
	br    *bufio.Reader
	calls *calls
	limit *rate.Limiter
	out   func(GuestRecord)
	// dropped counts the records refused since the last one passed on,
	// by reason.
	tooLong, malformed, overRate int
}

func (r *recordReader) run() error {
	for {
		line, err := r.br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			r.tooLong++
			if err := r.skipLine(); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		now := time.Now()
		if !r.limit.AllowN(now, 1) {
			r.overRate++
			continue
		}
		rec, ok := parseRecord(bytes.TrimSpace(line), now, r.calls)
		if !ok {
			r.malformed++
			continue
		}
		r.reportDropped(now)
		r.out(rec)
	}
}

// skipLine reads past the rest of an overlong line.
func (r *recordReader) skipLine() error {
	for {
		_, err := r.br.ReadSlice('\n')
		if !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
	}
}

// reportDropped passes on, as a record of the host's, how many records
// were refused before this one.
func (r *recordReader) reportDropped(now time.Time) {
	if r.tooLong+r.malformed+r.overRate == 0 {
		return
	}
	r.out(GuestRecord{Time: now, Level: zerolog.WarnLevel, Msg: "the host dropped records of the guest's agent",
		Fields: []GuestField{
			{"malformed", float64(r.malformed)},
			{"over_rate", float64(r.overRate)},
			{"too_long", float64(r.tooLong)},
		}})
	r.tooLong, r.malformed, r.overRate = 0, 0, 0
}

// recordLevels are the levels a guest's record may have.
var recordLevels = map[string]zerolog.Level{
	"trace": zerolog.TraceLevel, "debug": zerolog.DebugLevel, "info": zerolog.InfoLevel,
	"warn": zerolog.WarnLevel, "error": zerolog.ErrorLevel,
}

// parseRecord checks one line (see the top of this file).
func parseRecord(line []byte, now time.Time, calls *calls) (GuestRecord, bool) {
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil || dec.More() {
		return GuestRecord{}, false
	}
	var rec GuestRecord
	var level string
	if json.Unmarshal(raw["level"], &level) != nil {
		return GuestRecord{}, false
	}
	lv, ok := recordLevels[level]
	if !ok {
		return GuestRecord{}, false
	}
	rec.Level = lv
	rec.Time = now
	var ts string
	if json.Unmarshal(raw["time"], &ts) == nil {
		if t, err := time.Parse(time.RFC3339Nano, ts); err == nil && !t.After(now) && now.Sub(t) <= maxRecordSkew {
			rec.Time = t
		}
	}
	var msg, op, method string
	json.Unmarshal(raw["msg"], &msg)
	rec.Msg = printable.String(msg, maxRecordMsg)
	if json.Unmarshal(raw["op_id"], &op) == nil && rpc.ValidOpID(op) {
		if trace, ok := calls.lookup(op); ok {
			rec.OpID, rec.TraceID = op, trace
			if json.Unmarshal(raw["method"], &method) == nil {
				rec.Method = printable.String(method, 64)
			}
		}
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		switch k {
		case "time", "level", "applet", "msg", "op_id", "trace_id", "method", "vm":
			continue // the host's to say, or said above
		}
		if recordKey().MatchString(k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if len(rec.Fields) == maxRecordFields {
			break
		}
		if v, ok := fieldValue(raw[k]); ok {
			rec.Fields = append(rec.Fields, GuestField{k, v})
		}
	}
	return rec, true
}

// fieldValue is a field's value if it has one of the simple shapes.
func fieldValue(raw json.RawMessage) (any, bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return nil, false
	}
	switch v := v.(type) {
	case string:
		return printable.String(v, maxRecordString), true
	case bool:
		return v, true
	case json.Number:
		f, err := v.Float64()
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return nil, false
		}
		return f, true
	case []any:
		var out []string
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, false
			}
			if len(out) == maxRecordList {
				break
			}
			out = append(out, printable.String(s, maxListString))
		}
		return out, true
	}
	return nil, false
}
