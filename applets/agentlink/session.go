package agentlink

import (
	"fmt"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"
)

// SessionConfig is the yamux configuration of both ends. The host sends
// keepalives, so it notices a guest that stopped answering; the agent
// does not: it learns that the host left from the port itself.
func SessionConfig(log *zerolog.Logger, keepAlive bool) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = keepAlive
	// A slow guest under TCG is still a live one.
	cfg.ConnectionWriteTimeout = 30 * time.Second
	cfg.LogOutput = nil
	cfg.Logger = yamuxLogger{log}
	return cfg
}

// yamuxLogger sends yamux's messages to the debug log: a session that
// ends is reported to whoever used it as an error, not logged as one.
type yamuxLogger struct{ log *zerolog.Logger }

func (l yamuxLogger) Print(v ...any) { l.log.Debug().Msg(fmt.Sprint(v...)) }

func (l yamuxLogger) Printf(format string, v ...any) {
	l.log.Debug().Msg(fmt.Sprintf(format, v...))
}

func (l yamuxLogger) Println(v ...any) { l.log.Debug().Msg(fmt.Sprint(v...)) }
