package agent

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"banger/applets/agent/boot"
	"banger/internal/agentlink"
	"banger/internal/api"
	"banger/rpc"
)

// agent holds what the agent's methods answer with.
type agent struct {
	build api.Build
	log   zerolog.Logger
	// id is who the guest is; agent.resume changes it.
	id identity
	// reaper starts the commands of agent.exec and waits for them; nil
	// in an agent that runs none.
	reaper *reaper
	// records are the agent's log records, for the host (agent.logs).
	records *recordQueue
	// sessions are the running exec commands by the op id of their call,
	// for agent.signal.
	sessions sessionTable
	// poweroff receives the reason of the first power-off request; PID 1
	// waits on it.
	poweroff chan string
}

// methods is the agent's dispatch table.
func (a *agent) methods() rpc.Methods {
	return rpc.Methods{
		agentlink.MethodPing:     rpc.Handle(a.ping),
		agentlink.MethodPorts:    rpc.Handle(a.ports),
		agentlink.MethodPowerOff: rpc.Handle(a.powerOff),
		agentlink.MethodResume:   rpc.Handle(a.resume),
		agentlink.MethodSignal:   rpc.Handle(a.signal),
	}
}

// streams is the agent's table of session methods.
func (a *agent) streams() rpc.Streams {
	return rpc.Streams{
		agentlink.MethodExec:  rpc.HandleStream(a.exec),
		agentlink.MethodUntar: rpc.HandleStream(a.untar),
		agentlink.MethodTar:   rpc.HandleStream(a.tar),
		agentlink.MethodLogs:  rpc.HandleStream(a.logs),
	}
}

func (a *agent) ping(context.Context, rpc.NoParams) (agentlink.PingResult, error) {
	hostname, bootID := a.id.get()
	return agentlink.PingResult{
		Version:  a.build.Version,
		BootID:   bootID,
		Hostname: hostname,
		UptimeMS: float64(uptime().Microseconds()) / 1000,
	}, nil
}

// powerOff answers at once; PID 1 powers the guest off once the answer
// is written.
func (a *agent) powerOff(context.Context, rpc.NoParams) (struct{}, error) {
	a.requestPowerOff("requested by the host")
	return struct{}{}, nil
}

func (a *agent) requestPowerOff(reason string) {
	select {
	case a.poweroff <- reason:
	default: // one is enough
	}
}

// uptime is the time since the guest booted.
func uptime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// identity is the guest's hostname and boot id as the agent reports
// them.
type identity struct {
	mu       sync.Mutex
	hostname string
	bootID   string
	// net and mac are eth0's configuration, once set ("" mac: the
	// device's own).
	net boot.Network
	mac string
}

// network returns eth0's configuration.
func (i *identity) network() (boot.Network, string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.net, i.mac
}

func (i *identity) setNetwork(n boot.Network, mac string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.net, i.mac = n, mac
}

func (i *identity) get() (hostname, bootID string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.hostname, i.bootID
}

func (i *identity) set(hostname, bootID string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.hostname, i.bootID = hostname, bootID
}
