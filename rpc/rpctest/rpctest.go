// Package rpctest is what the tests of rpc method tables share.
package rpctest

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"slices"
	"sync"
	"testing"

	"banger/rpc"
)

// recorder is a Caller that records the methods called, and answers none.
type recorder struct{ methods []string }

func (r *recorder) Call(ctx context.Context, method string, params, result any) error {
	r.methods = append(r.methods, method)
	return errors.New("recorded")
}

// SameMethods checks that a typed client built by mk calls exactly the
// methods of table: each of its methods is called once, with zero
// arguments, on a Caller that records which rpc method it calls.
func SameMethods[C any](t testing.TB, table rpc.Methods, mk func(rpc.Caller) C) {
	t.Helper()
	rec := &recorder{}
	v := reflect.ValueOf(mk(rec))
	ctxType := reflect.TypeFor[context.Context]()
	for i := range v.NumMethod() {
		m := v.Method(i)
		if v.Type().Method(i).Name == "Call" {
			continue // the embedded Caller's own
		}
		args := make([]reflect.Value, m.Type().NumIn())
		for j := range args {
			if in := m.Type().In(j); in == ctxType {
				args[j] = reflect.ValueOf(context.Background())
			} else {
				args[j] = reflect.Zero(in)
			}
		}
		before := len(rec.methods)
		m.Call(args)
		if len(rec.methods) != before+1 {
			t.Errorf("%s makes %d calls, want 1", v.Type().Method(i).Name, len(rec.methods)-before)
		}
	}
	var served []string
	for name := range table {
		served = append(served, name)
	}
	slices.Sort(served)
	called := slices.Clone(rec.methods)
	slices.Sort(called)
	// Each method once: no two client methods call the same one.
	if !slices.Equal(called, served) {
		t.Errorf("the typed client calls %q; the table serves %q", called, served)
	}
}

// LogBuffer is a bytes.Buffer that servers' goroutines can log into while
// a test reads it.
type LogBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *LogBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *LogBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
