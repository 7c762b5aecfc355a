package usernet

import (
	"io"
	"sync"

	"github.com/rs/zerolog"
	"github.com/sirupsen/logrus"
)

// gvisor-tap-vsock logs through logrus's global logger. Its records
// become the daemon's (zerolog) records, at debug: what a guest does to
// its network is the guest's business, and refusals are logged here.
var (
	libLogOnce sync.Once
	libLog     struct {
		sync.Mutex
		zerolog.Logger
	}
)

func useLogger(l zerolog.Logger) {
	libLog.Lock()
	libLog.Logger = l
	libLog.Unlock()
	libLogOnce.Do(func() {
		logrus.SetOutput(io.Discard)
		logrus.SetLevel(logrus.InfoLevel)
		logrus.AddHook(libHook{})
	})
}

type libHook struct{}

func (libHook) Levels() []logrus.Level { return logrus.AllLevels }

func (libHook) Fire(e *logrus.Entry) error {
	libLog.Lock()
	l := libLog.Logger
	libLog.Unlock()
	l.Debug().Str("lib", "gvisor-tap-vsock").Str("lib_level", e.Level.String()).Msg(e.Message)
	return nil
}
