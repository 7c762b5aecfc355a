package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"

	"github.com/prometheus/procfs"

	"banger/internal/agentlink"
	"banger/rpc"
)

// tcpListen is the LISTEN state in /proc/net/tcp (include/net/tcp_states.h).
const tcpListen = 0x0A

func (a *agent) ports(context.Context, rpc.NoParams) (agentlink.PortsResult, error) {
	ports, err := listeningPorts("/proc")
	if err != nil {
		return agentlink.PortsResult{}, err
	}
	return agentlink.PortsResult{Ports: ports}, nil
}

// listeningPorts lists the listening TCP sockets of the proc file system
// at proc, sorted by port, protocol and address, each once (sockets
// sharing a port with SO_REUSEPORT are one listener to the host).
func listeningPorts(proc string) ([]agentlink.Port, error) {
	pfs, err := procfs.NewFS(proc)
	if err != nil {
		return nil, fmt.Errorf("list ports: %w", err)
	}
	ports := []agentlink.Port{}
	for _, t := range []struct {
		proto string
		read  func() (procfs.NetTCP, error)
	}{{"tcp", pfs.NetTCP}, {"tcp6", pfs.NetTCP6}} {
		lines, err := t.read()
		if errors.Is(err, fs.ErrNotExist) {
			continue // a kernel without IPv6
		}
		if err != nil {
			return nil, fmt.Errorf("list %s ports: %w", t.proto, err)
		}
		for _, l := range lines {
			if l.St == tcpListen {
				ports = append(ports, agentlink.Port{Proto: t.proto, Address: l.LocalAddr.String(), Port: int(l.LocalPort)})
			}
		}
	}
	slices.SortFunc(ports, func(a, b agentlink.Port) int {
		return cmp.Or(cmp.Compare(a.Port, b.Port), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Address, b.Address))
	})
	return slices.Compact(ports), nil
}
