package rpc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"banger/logging"
	"banger/rpc"
)

// fuzzSeeds are good and bad requests: FuzzServe's seed corpus, and what
// TestSeedsOverSocket sends over a real connection.
var fuzzSeeds = []string{
	`{"version":1,"method":"ping"}` + "\n",
	`{"version":1,"method":"echo","params":{"name":"box","n":2},"op_id":"op-01JT2M4Q8W3R6ZK5N7YB2C9D0E"}`,
	`{"version":1,"method":"echo","params":{"name":"box","extra":true},"future":1}`,
	`{"version":1,"method":"echo","params":"nope"}`,
	`{"version":1,"method":"echo","params":null}`,
	`{"version":1,"method":"op","op_id":"op-01JT2M4Q8W3R6ZK5N7YB2C9D0E"}`,
	`{"version":1,"method":"op","op_id":"op-81JT2M4Q8W3R6ZK5N7YB2C9D0E"}`,
	`{"version":1,"method":"op","op_id":"op-01jt2m4q8w3r6zk5n7yb2c9d0e"}`,
	`{"version":1,"method":"op","op_id":7}`,
	`{"version":2,"method":"ping"}`,
	`{"version":1.5,"method":"ping"}`,
	`{"method":"ping"}`,
	`{"version":1,"method":"vm.nope"}`,
	`{"version":1,"method":"fail.not_found"}`,
	`{"version":1,"method":"fail.plain"}`,
	`{"version":1,"method":"fail.multiline"}`,
	`{"version":1,"method":"fail.nocode"}`,
	`{"version":1,"method":"fail.nilerr"}`,
	`{"version":1,"method":"panic"}`,
	`{"version":1,"method":"badresult"}`,
	`{"version":1,"method":"unencodable"}`,
	`{"version":1,"method":"ping\n\u0000\ud800"}`,
	`{"version":1,"method":"ping"}{"version":1,"method":"panic"}`,
	`{"version":1,`,
	`{"version":1,"method":}`,
	``,
	"\n\n",
	`[1]`,
	`"x"`,
	`null`,
	`{}`,
	`{"version":1}`,
	"\xff\xfe{",
	`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[`,
}

// fuzzServer serves baseMethods minus the ones that wait for cancellation
// (a stdio exchange has no peer to hang up), adopting op ids so that the
// adopted ones are checked too.
func fuzzServer(s *rpc.Server) {
	s.Methods = baseMethods()
	delete(s.Methods, "block")
	s.Authorize = func(rpc.Peer) error { return nil }
	s.Logger = logging.New(io.Discard, "fuzz", zerolog.DebugLevel)
	s.AdoptOpID = true
}

// FuzzServe feeds arbitrary bytes to the read-decode-dispatch path: exactly
// one response goes back, on one line, a JSON object, and a failure carries
// a code from PROTOCOL.md's list and a well-formed op id. It goes through
// ServeStdio, which shares that path with socket connections; fuzzing over
// a socket adds scheduling noise to the coverage signal and a tenth of the
// speed (TestSeedsOverSocket checks that both transports agree).
func FuzzServe(f *testing.F) {
	for _, seed := range fuzzSeeds {
		f.Add([]byte(seed))
	}
	var s rpc.Server
	fuzzServer(&s)
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		s.ServeStdio(context.Background(), bytes.NewReader(in), &out, rpc.Peer{})
		if _, err := checkWire(out.Bytes()); err != nil {
			t.Fatalf("request %q: %v", in, err)
		}
	})
}

// TestSeedsOverSocket sends FuzzServe's seeds over real connections: the
// same checks hold, and the answers match those of ServeStdio.
func TestSeedsOverSocket(t *testing.T) {
	ts := startServer(t, fuzzServer)
	var stdio rpc.Server
	fuzzServer(&stdio)
	for _, in := range fuzzSeeds {
		viaSocket, err := checkWire(rawExchange(t, ts.Sock, []byte(in), true))
		if err != nil {
			t.Fatalf("socket, request %q: %v", in, err)
		}
		var out bytes.Buffer
		stdio.ServeStdio(context.Background(), bytes.NewReader([]byte(in)), &out, rpc.Peer{})
		viaStdio, err := checkWire(out.Bytes())
		if err != nil {
			t.Fatalf("stdio, request %q: %v", in, err)
		}
		if viaStdio.OK != viaSocket.OK || !bytes.Equal(stripOpID(viaStdio.Result), stripOpID(viaSocket.Result)) ||
			!viaStdio.OK && (viaStdio.Error.Code != viaSocket.Error.Code || anonymous(viaStdio.Error) != anonymous(viaSocket.Error)) {
			t.Errorf("request %q: stdio and socket disagree:\n%+v %s\n%+v %s", in, viaStdio, viaStdio.Result, viaSocket, viaSocket.Result)
		}
	}
}

// anonymous is e's message without its op id (fail.not_found quotes it).
func anonymous(e *rpc.ErrorResponse) string {
	return strings.ReplaceAll(e.Message, e.OpID, "op")
}

// stripOpID removes the op ids that echo and op return, which differ per
// call unless adopted.
func stripOpID(raw json.RawMessage) []byte {
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return raw
	}
	switch x := v.(type) {
	case map[string]any:
		delete(x, "op_id")
	case string:
		if rpc.ValidOpID(x) {
			v = "op"
		}
	}
	b, _ := json.Marshal(v)
	return b
}
