package agent

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"time"
	"unsafe"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"banger/applets/agent/boot"
	"banger/internal/agentlink"
	"banger/internal/api"
	"banger/internal/lazyre"
	"banger/logging"
	"banger/rpc"
)

// What agent.resume accepts.
var (
	hostnameRE  = lazyre.New(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,62})$`)
	machineIDRE = lazyre.New(`^[0-9a-f]{32}$`)
	bootIDRE    = lazyre.New(`^[0-9a-f-]{1,64}$`)
)

func validResume(p agentlink.ResumeParams) error {
	bad := func(format string, args ...any) error { return rpc.Errorf(rpc.CodeInvalidParams, format, args...) }
	switch {
	case !hostnameRE().MatchString(p.Hostname):
		return bad("hostname %q: want 1 to 63 of a-z, A-Z, 0-9 and -", p.Hostname)
	case !machineIDRE().MatchString(p.MachineID):
		return bad("machine id %q: want 32 lowercase hex digits", p.MachineID)
	case !bootIDRE().MatchString(p.BootID):
		return bad("boot id %q: want lowercase hex and -", p.BootID)
	case len(p.Seed) < 32 || len(p.Seed) > 512:
		return bad("seed of %d bytes: want 32 to 512", len(p.Seed))
	case p.TimeUnixNS <= 0:
		return bad("time %d: want nanoseconds since 1970", p.TimeUnixNS)
	}
	if n := p.Network; n != nil {
		if !n.Address.IsValid() || !n.Address.Addr().Is4() {
			return bad("network address %q: want IPv4 with a prefix", n.Address)
		}
		if n.MAC != "" && !api.IsGuestMAC(n.MAC) {
			return bad("mac %q: want a locally administered unicast address in lowercase", n.MAC)
		}
	}
	return nil
}

// resume takes on the identity the host gives a guest restored from a
// warm snapshot: clock first (everything after logs the right time), then
// randomness, names and network.
func (a *agent) resume(ctx context.Context, p agentlink.ResumeParams) (agentlink.ResumeResult, error) {
	// The records queued until now are the snapshot's: of the guest it
	// was taken from, which has given them to its own host already. (The
	// host reads a restored guest's records only from its resume on.)
	if a.records != nil {
		a.records.discard()
	}
	if err := validResume(p); err != nil {
		return agentlink.ResumeResult{}, err
	}
	start := time.Now()
	var marks []time.Duration // after each step, for the log
	mark := func() { marks = append(marks, time.Since(start)) }
	ts := unix.NsecToTimespec(p.TimeUnixNS)
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return agentlink.ResumeResult{}, fmt.Errorf("set the clock: %w", err)
	}
	// The clock jumped: measure from here.
	start = time.Now()
	if err := reseed(p.Seed); err != nil {
		return agentlink.ResumeResult{}, err
	}
	mark()
	if err := unix.Sethostname([]byte(p.Hostname)); err != nil {
		return agentlink.ResumeResult{}, fmt.Errorf("set hostname %s: %w", p.Hostname, err)
	}
	if err := writeMachineID(p.MachineID); err != nil {
		return agentlink.ResumeResult{}, err
	}
	mark()
	if n := p.Network; n != nil {
		net := boot.Network{Address: n.Address, Gateway: n.Gateway, DNS: n.DNS, Search: n.Search}
		// The snapshot's guest usually had this very network (user-mode
		// networking is the same for all): then there is nothing to do,
		// and under TCG every netlink call costs.
		if had, mac := a.id.network(); had != net || n.MAC != "" && n.MAC != mac {
			if err := configureEth0(a.log, net, n.MAC); err != nil {
				return agentlink.ResumeResult{}, err
			}
			a.id.setNetwork(net, n.MAC)
		}
	}
	mark()
	a.id.set(p.Hostname, p.BootID)
	took := time.Since(start)
	logging.From(ctx).Info().Str("hostname", p.Hostname).Str("boot_id", p.BootID).
		Float64("reseed_ms", logging.Millis(marks[0])).Float64("names_ms", logging.Millis(marks[1]-marks[0])).
		Float64("network_ms", logging.Millis(marks[2]-marks[1])).
		Float64("duration_ms", logging.Millis(took)).Msg("resumed with a new identity")
	return agentlink.ResumeResult{DurationMS: logging.Millis(took)}, nil
}

// reseed mixes seed into the kernel's input pool, crediting it, and makes
// the kernel reseed its generator from the pool now rather than at its
// next scheduled reseed: until then, every guest restored from one
// snapshot would read the same random bytes.
func reseed(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("reseed: %w", err)
	}
	defer f.Close()
	// struct rand_pool_info: entropy_count (bits), buf_size (bytes), buf.
	info := make([]byte, 8+len(seed))
	binary.NativeEndian.PutUint32(info[0:], uint32(8*len(seed)))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(seed)))
	copy(info[8:], seed)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return fmt.Errorf("reseed: add entropy: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("reseed: reseed the generator: %w", e)
	}
	return nil
}

// writeMachineID replaces /etc/machine-id. A machine id is always 33
// bytes, so the usual case overwrites the old one in place: replacing the
// file (rename or truncate) makes ext4 allocate and write its blocks at
// once, which costs a restore tens of milliseconds under TCG.
func writeMachineID(id string) error {
	const path = "/etc/machine-id"
	data := []byte(id + "\n")
	if f, err := os.OpenFile(path, os.O_WRONLY, 0); err == nil {
		fi, err := f.Stat()
		if err == nil && fi.Size() == int64(len(data)) {
			_, err = f.WriteAt(data, 0)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("write %s: %w", path, err)
			}
			return nil
		}
		f.Close()
	}
	tmp := path + ".banger"
	if err := os.WriteFile(tmp, data, 0o444); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// ensureMachineID gives a guest without a machine id one, as systemd's
// first boot would; a restored guest then overwrites it in place.
func ensureMachineID(log zerolog.Logger) {
	if fi, err := os.Stat("/etc/machine-id"); err == nil && fi.Size() == 33 {
		return
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		log.Warn().Err(err).Msg("no machine id")
		return
	}
	if err := writeMachineID(hex.EncodeToString(b)); err != nil {
		log.Warn().Err(err).Msg("no machine id")
	}
}
