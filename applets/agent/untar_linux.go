package agent

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"banger/internal/session"
	"banger/internal/untar"
	"banger/logging"
	"banger/rpc"
)

// untar starts agent.untar: the session's input is a tar stream,
// unpacked into the directory.
func (a *agent) untar(_ context.Context, p session.Untar) (struct{}, rpc.StreamFunc, error) {
	user, dir, err := sessionPath(p.User, p.Dir)
	if err != nil {
		return struct{}{}, nil, err
	}
	var own *untar.Owner
	if !isRoot(p.User) {
		own = &untar.Owner{UID: int(user.uid), GID: int(user.gid)}
	}
	opts := untar.Options{Owner: own}
	if p.Top != "" {
		if p.Top != "." && !fs.ValidPath(p.Top) || strings.Contains(p.Top, "/") {
			return struct{}{}, nil, rpc.Errorf(rpc.CodeInvalidParams, "top %q is not one name", p.Top)
		}
		dir, opts = untar.Into(dir, p.Top)
		opts.Owner = own
	}
	return struct{}{}, func(ctx context.Context, conn net.Conn) error {
		return runUntar(logging.From(ctx), dir, opts, conn)
	}, nil
}

// runUntar unpacks the session's input into dir and answers with Exit:
// code 0, or 1 and why the stream or an entry was refused. A host that
// goes away gets no answer.
func runUntar(log *zerolog.Logger, dir string, opts untar.Options, conn net.Conn) error {
	start := time.Now()
	in := &stdinReader{r: session.NewReader(conn)}
	st, err := untar.Unpack(dir, in, opts)
	if err == nil {
		// The end-of-archive blocks may be followed by padding.
		_, err = io.Copy(io.Discard, in)
	}
	rec := log.Info()
	if err != nil {
		rec = log.Warn().Err(err)
	}
	rec.Str("dir", dir).Int("entries", st.Entries).Int("files", st.Files).Int64("bytes", st.Bytes).
		Float64("duration_ms", logging.Millis(time.Since(start))).Msg("untar done")
	if in.err != nil {
		return in.err
	}
	w := session.NewWriter(conn)
	if err != nil {
		return w.WriteJSON(session.Exit, session.ExitStatus{Code: 1, Error: err.Error()})
	}
	return w.WriteJSON(session.Exit, session.ExitStatus{Code: 0})
}

// stdinReader reads the payloads of a session's Stdin frames up to its
// StdinEOF. Other frames mean nothing to a copy and are skipped.
type stdinReader struct {
	r   *session.Reader
	buf []byte
	eof bool
	err error // the host's connection failed: it is gone
}

func (s *stdinReader) Read(p []byte) (int, error) {
	for len(s.buf) == 0 {
		switch {
		case s.err != nil:
			return 0, s.err
		case s.eof:
			return 0, io.EOF
		}
		f, err := s.r.Next()
		if err != nil {
			s.err = fmt.Errorf("the host left before the end of the stream: %w", err)
			return 0, s.err
		}
		switch f.Kind {
		case session.Stdin:
			s.buf = f.Payload // valid until the next Next, by when it is read
		case session.StdinEOF:
			s.eof = true
		}
	}
	n := copy(p, s.buf)
	s.buf = s.buf[n:]
	return n, nil
}
