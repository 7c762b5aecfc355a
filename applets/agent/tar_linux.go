package agent

import (
	"bufio"
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"time"

	"github.com/rs/zerolog"

	"banger/internal/session"
	"banger/internal/treetar"
	"banger/logging"
	"banger/rpc"
)

// tar starts agent.tar. A path that is not there is refused before the
// stream (not_found), so the host's caller gets a code, not a broken
// copy.
func (a *agent) tar(_ context.Context, p session.Tar) (struct{}, rpc.StreamFunc, error) {
	_, target, err := sessionPath(p.User, p.Path)
	if err != nil {
		return struct{}{}, nil, err
	}
	if _, err := os.Lstat(target); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return struct{}{}, nil, rpc.Errorf(rpc.CodeNotFound, "%s does not exist in the guest", target)
		}
		return struct{}{}, nil, rpc.Errorf(rpc.CodeInvalidParams, "%v", err)
	}
	return struct{}{}, func(ctx context.Context, conn net.Conn) error {
		return runTar(logging.From(ctx), target, conn)
	}, nil
}

// runTar writes the tar stream of target as Stdout frames, then Exit:
// code 0, or 1 and why it stopped. A host that goes away ends it.
func runTar(log *zerolog.Logger, target string, conn net.Conn) error {
	start := time.Now()
	w := session.NewWriter(conn)
	// Full frames: tar writes in 512-byte pieces.
	bw := bufio.NewWriterSize(stdoutFrames{w}, session.MaxPayload)
	tw, err := treetar.WriteTree(bw, target)
	if err == nil {
		err = bw.Flush()
	}
	rec := log.Info()
	if err != nil {
		rec = log.Warn().Err(err)
	}
	rec.Str("path", target).Int("files", tw.Files).Int64("bytes", tw.Bytes).
		Float64("duration_ms", logging.Millis(time.Since(start))).Msg("tar done")
	if err != nil {
		return w.WriteJSON(session.Exit, session.ExitStatus{Code: 1, Error: err.Error()})
	}
	return w.WriteJSON(session.Exit, session.ExitStatus{})
}

// stdoutFrames writes what it is given as Stdout frames.
type stdoutFrames struct{ w *session.Writer }

func (s stdoutFrames) Write(p []byte) (int, error) {
	if err := s.w.Write(session.Stdout, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
