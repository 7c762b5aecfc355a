// Package helper is the bangerd-root applet: banger's narrow privileged
// helper. It serves a closed list of priv.* methods to root and to the one
// owner user, on its socket or, in sudo mode, for one request on stdin.
// It adopts the caller's op id so its records join the daemon's, and writes
// exactly one "helper rpc completed" or "helper rpc failed" record per call.
//
// It must not grow general-purpose methods: every method validates every
// field and does one banger-shaped thing. The network methods (bridge,
// taps, NAT) check their params with the rules of policy.go, all in one
// place, before they touch anything.
package helper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"banger/internal/api"
	"banger/internal/layout"
	"banger/internal/service"
	"banger/internal/telemetry"
	"banger/logging"
	"banger/rpc"
)

// Main runs the helper with args (args[0] is the applet's name).
func Main(build api.Build, applets []string, args []string) int {
	app := &cli.App{
		Name:    api.AppletHelper,
		Usage:   "banger's privileged helper (runs as root)",
		Version: build.String(),
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "socket", Usage: "serve on the Unix socket `PATH`"},
			&cli.BoolFlag{Name: "stdio", Usage: "serve one request from stdin to stdout (sudo mode)"},
			&cli.IntFlag{Name: "owner-uid", Value: -1, Usage: "the one non-root `UID` allowed to call (default: from " + layout.SystemConfig + ")"},
			&cli.StringFlag{Name: "log-level", EnvVars: []string{logging.EnvLevel}, Value: "info", Usage: "trace, debug, info, warn or error"},
			&cli.StringFlag{Name: "log-file", Usage: "also append JSON records to `FILE`"},
			&cli.StringFlag{Name: "lock-file", Value: DefaultLockFile, Usage: "order network changes with the host's other helpers by an flock on `FILE` (its directory must be root's alone)"},
		},
		Commands: []*cli.Command{newDoctorCommand(), newSystemCommand()},
		Metadata: map[string]any{appletsKey: applets, buildKey: build},
		Action: func(c *cli.Context) error {
			return run(c.Context, build, options{
				socket:   c.String("socket"),
				stdio:    c.Bool("stdio"),
				ownerUID: c.Int("owner-uid"),
				level:    c.String("log-level"),
				logFile:  c.String("log-file"),
				lockFile: c.String("lock-file"),
			})
		},
	}
	return service.Run(app, args)
}

type options struct {
	socket   string
	stdio    bool
	ownerUID int
	level    string
	logFile  string
	lockFile string
}

func run(ctx context.Context, build api.Build, o options) error {
	if o.stdio == (o.socket != "") {
		return cli.Exit("give exactly one of --socket PATH or --stdio", service.ExitUsage)
	}
	level, err := logging.ParseLevel(o.level)
	if err != nil {
		return cli.Exit(err.Error(), service.ExitUsage)
	}
	var out io.Writer = os.Stderr
	if o.logFile != "" {
		f, err := logging.OpenFile(o.logFile)
		if err != nil {
			return cli.Exit(err.Error(), service.ExitFailed)
		}
		defer f.Close()
		out = logging.Tee(os.Stderr, f)
	}
	log := logging.New(out, api.AppletHelper, level)

	owner, err := ownerUID(o.ownerUID)
	if err != nil {
		log.Error().Err(err).Msg("helper not started")
		return cli.Exit(err.Error(), service.ExitFailed)
	}
	if o.lockFile == "" {
		return cli.Exit("--lock-file must name a file", service.ExitUsage)
	}
	// Spans go out over OTLP only when the helper's own environment asks
	// (its service unit's; sudo resets the daemon's): a root process
	// takes no endpoint from the user it serves. The last ones are
	// flushed before it exits, after each call in sudo mode.
	tel, err := telemetry.Setup(ctx, api.AppletHelper, build.String(), log)
	if err != nil {
		log.Warn().Err(err).Msg("spans are not exported")
	}
	defer tel.Close(log)
	srv := newServer(build, owner, o.lockFile, log)
	srv.Spans = tel

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if o.stdio {
		srv.ServeStdio(ctx, os.Stdin, os.Stdout, stdioPeer())
		return nil
	}
	return serveSocket(ctx, srv, o.socket, owner, log)
}

// newServer is the helper's server: root and owner (when >= 0) may call
// its closed list of methods, and each call writes one record. Network
// changes hold the flock on lockFile.
func newServer(build api.Build, owner int, lockFile string, log zerolog.Logger) *rpc.Server {
	allowed := []uint32{0}
	tapOwner := uint32(0) // with no owner only root calls, and root's engine opens the taps
	if owner >= 0 {
		allowed = append(allowed, uint32(owner))
		tapOwner = uint32(owner)
	}
	return &rpc.Server{
		Methods:   methods(build, newNetwork(tapOwner, lockFile)),
		Authorize: rpc.AllowUIDs(allowed...),
		Logger:    log,
		AdoptOpID: true,
		CallLog:   rpc.CallLog{Completed: "helper rpc completed", Failed: "helper rpc failed", Level: zerolog.InfoLevel},
	}
}

func serveSocket(ctx context.Context, srv *rpc.Server, path string, owner int, log zerolog.Logger) error {
	ln, err := rpc.Listen(path, 0o600)
	if err != nil {
		log.Error().Err(err).Msg("helper not started")
		return cli.Exit(err.Error(), service.ExitFailed)
	}
	// The socket belongs to the owner so that the owner's daemon can
	// connect; mode 0600 keeps everyone else out.
	if owner > 0 {
		if err := os.Chown(path, owner, -1); err != nil {
			ln.Close()
			return cli.Exit(fmt.Sprintf("chown %s: %v", path, err), service.ExitFailed)
		}
	}
	log.Info().Str("socket", path).Int("owner_uid", owner).Int("pid", os.Getpid()).Msg("helper serving")
	errc := make(chan error, service.ExitFailed)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, rpc.ErrServerClosed) {
			return cli.Exit(fmt.Sprintf("serve: %v", err), service.ExitFailed)
		}
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(shutdownCtx)
	log.Info().Msg("helper stopped")
	return nil
}

// ownerUID is the flag's uid, else the install config's, else -1 (root
// only).
func ownerUID(flag int) (int, error) {
	if flag >= 0 {
		return flag, nil
	}
	var cfg struct {
		UID *int `toml:"uid"`
	}
	_, err := toml.DecodeFile(layout.SystemConfig, &cfg)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return -1, nil
	case err != nil:
		return -1, fmt.Errorf("read %s: %w", layout.SystemConfig, err)
	case cfg.UID == nil:
		return -1, nil
	case *cfg.UID < 0:
		return -1, fmt.Errorf("%s: uid %d is not valid", layout.SystemConfig, *cfg.UID)
	}
	return *cfg.UID, nil
}

// stdioPeer is the caller in sudo mode: sudo records the invoking user in
// SUDO_UID (the caller cannot set it: sudo resets the environment). Run
// directly, the caller is our own real uid.
func stdioPeer() rpc.Peer {
	p := rpc.Peer{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getppid())}
	if os.Geteuid() == 0 {
		if u, err := strconv.ParseUint(os.Getenv("SUDO_UID"), 10, 32); err == nil {
			p.UID = uint32(u)
		}
	}
	return p
}
