package agentlink

import (
	"fmt"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"
)

// MuxConfig is the yamux configuration of both ends of the link: one
// multiplexed connection (yamux calls it a session; here a session is an
// exec or copy stream carried on it).
//
// Neither end runs a timer on an idle link: a guest may be paused for
// hours (a standby waits that way for a create), and a paused guest
// answers nothing, so a keepalive ping would close the mux of every
// standby that waited past its timeout, and an unacknowledged stream open
// would do the same (yamux closes the whole mux when a stream's open
// is not acknowledged in time). The host learns that a guest is gone from
// its engine process, whose exit closes the channel, not from a timer;
// the agent learns that the host left from the port itself. Each call
// bounds its own wait with its context.
func MuxConfig(log *zerolog.Logger) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = false
	cfg.StreamOpenTimeout = 0
	// A slow guest under TCG is still a live one. This bounds a write
	// only while it waits for the channel to take its bytes.
	cfg.ConnectionWriteTimeout = 30 * time.Second
	cfg.LogOutput = nil
	cfg.Logger = yamuxLogger{log}
	return cfg
}

// yamuxLogger sends yamux's messages to the debug log: a mux or stream
// that ends is reported to whoever used it as an error, not logged as one.
type yamuxLogger struct{ log *zerolog.Logger }

func (l yamuxLogger) Print(v ...any) { l.log.Debug().Msg(fmt.Sprint(v...)) }

func (l yamuxLogger) Printf(format string, v ...any) {
	l.log.Debug().Msg(fmt.Sprintf(format, v...))
}

func (l yamuxLogger) Println(v ...any) { l.log.Debug().Msg(fmt.Sprint(v...)) }
