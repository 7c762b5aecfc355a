package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/rs/zerolog"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"banger/applets/agent/boot"
	"banger/logging"
)

// ifaceWait bounds the wait for eth0 to appear after its driver loaded.
const ifaceWait = 3 * time.Second

// setupNetwork brings lo up and, when the kernel command line carries a
// network (boot.Network), configures eth0 with it.
func setupNetwork(log zerolog.Logger, cmd boot.Cmdline) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	n, ok, err := cmd.Network()
	if err != nil || !ok {
		return err
	}
	return configureEth0(log, n, "")
}

// configureEth0 gives eth0 the network n: address, default route and
// /etc/resolv.conf, and the hardware address mac unless it is "". What
// eth0 had before goes: a restored guest has the network of the guest
// its snapshot was taken from.
func configureEth0(log zerolog.Logger, n boot.Network, mac string) error {
	start := time.Now()
	step := func(what string) {
		log.Debug().Str("step", what).Float64("duration_ms", logging.Millis(time.Since(start))).Msg("network")
	}
	var eth netlink.Link
	var err error
	deadline := time.Now().Add(ifaceWait)
	for {
		eth, err = netlink.LinkByName("eth0")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("find eth0: %w", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	step("found eth0")
	if mac != "" && mac != eth.Attrs().HardwareAddr.String() {
		hw, err := net.ParseMAC(mac)
		if err != nil {
			return fmt.Errorf("eth0's address %q: %w", mac, err)
		}
		// virtio-net takes a new address while up only with a feature
		// QEMU may not offer; down, it always does.
		netlink.LinkSetDown(eth)
		if err := netlink.LinkSetHardwareAddr(eth, hw); err != nil {
			return fmt.Errorf("set eth0's address to %s: %w", mac, err)
		}
		step("mac")
	}
	want := &net.IPNet{IP: n.Address.Addr().AsSlice(), Mask: net.CIDRMask(n.Address.Bits(), n.Address.Addr().BitLen())}
	if addrs, err := netlink.AddrList(eth, netlink.FAMILY_V4); err == nil {
		for _, a := range addrs {
			if !a.IPNet.IP.Equal(want.IP) || a.IPNet.String() != want.String() {
				netlink.AddrDel(eth, &a)
			}
		}
	}
	if err := netlink.AddrAdd(eth, &netlink.Addr{IPNet: want}); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add %s to eth0: %w", n.Address, err)
	}
	step("address")
	if err := netlink.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bring eth0 up: %w", err)
	}
	step("up")
	if n.Gateway.IsValid() {
		route := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: n.Gateway.AsSlice()}
		if err := netlink.RouteReplace(route); err != nil {
			return fmt.Errorf("set the default route via %s: %w", n.Gateway, err)
		}
	}
	step("route")
	if n.DNS.IsValid() {
		if err := writeResolvConf(n.DNS.String(), n.Search); err != nil {
			return err
		}
	}
	log.Info().Str("address", n.Address.String()).Str("gateway", n.Gateway.String()).Str("mac", mac).Msg("network up")
	return nil
}

// writeResolvConf points the resolver at server, with a search domain
// when search is not "". An image's resolv.conf is often a symlink into a
// resolver daemon's runtime directory, which does not run here, so a link
// is replaced by a file.
func writeResolvConf(server, search string) error {
	const path = "/etc/resolv.conf"
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		os.Remove(path)
	}
	os.MkdirAll("/etc", 0o755)
	conf := "nameserver " + server + "\n"
	if search != "" {
		conf += "search " + search + "\n"
	}
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
