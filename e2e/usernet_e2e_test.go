package e2e_test

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// userNetSandbox is a sandbox whose daemon runs (with no helper) in a
// namespace of its own, "the host", linked by a veth to a second one,
// "the outside world": the test gives the host listeners on its loopback,
// on its own address and on the link-local metadata address, none of
// which a guest may reach, and one outside, which it may.
type userNetSandbox struct {
	*sandbox
	host, outside *netns
	hostAddr      string // the host's address on the veth
	outsideAddr   string
}

func newUserNetSandbox(t *testing.T) *userNetSandbox {
	t.Helper()
	needGuests(t)
	u := &userNetSandbox{sandbox: newSandbox(t), host: newNetns(t), outside: newNetns(t),
		hostAddr: "10.98.0.1", outsideAddr: "10.98.0.2"}
	u.env = append(u.env, "BANGER_NO_AUTOSTART=1")
	u.host.ip("link", "set", "lo", "up")
	u.host.ip("addr", "add", "169.254.169.254/32", "dev", "lo")
	u.outside.ip("link", "set", "lo", "up")
	u.host.ip("link", "add", "bgveth0", "type", "veth", "peer", "name", "bgveth1", "netns", u.outside.name)
	u.host.ip("addr", "add", u.hostAddr+"/24", "dev", "bgveth0")
	u.host.ip("link", "set", "bgveth0", "up")
	u.outside.ip("addr", "add", u.outsideAddr+"/24", "dev", "bgveth1")
	u.outside.ip("link", "set", "bgveth1", "up")
	return u
}

// daemon starts the daemon inside the host namespace.
func (u *userNetSandbox) daemon() *exec.Cmd {
	u.t.Helper()
	cmd := u.startProcess(0, &bytes.Buffer{}, "ip", "netns", "exec", u.host.name, bangerBin, "bangerd", "--helper", "none")
	waitSocket(u.t, u.socket())
	return cmd
}

// reaches says whether the guest of vm connects to addr (host:port).
// A refused connection ends at once; the timeout only bounds a dropped
// one.
func (u *userNetSandbox) reaches(vm, addr string) bool {
	u.t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	r := u.banger("vm", "exec", vm, "--", "nc", "-w", "5", host, port)
	u.t.Logf("%s: nc %s: exit %d %s", vm, addr, r.code, strings.TrimSpace(r.stderr))
	return r.code == 0
}

// A default user-mode guest reaches the outside world and nothing of the
// host: not its loopback (QEMU's own user network dialed 10.0.2.2 as the
// host's 127.0.0.1), not another VM's published port, not the host's own
// address, not link-local. --allow-host opens one loopback port, and only
// it. A restarted daemon gives running VMs their network back.
func TestUserModeGuestsReachNothingOfTheHost(t *testing.T) {
	u := newUserNetSandbox(t)
	d := u.daemon()
	loopback := u.host.listen(t, "127.0.0.1:0")
	_, loopPort, _ := net.SplitHostPort(loopback)
	ownAddr := u.host.listen(t, u.hostAddr+":0")
	metadata := u.host.listen(t, "169.254.169.254:80")
	outside := u.outside.listen(t, u.outsideAddr+":0")
	published := freePort(t)

	u.banger("vm", "run", "-d", "--name", "web", "--publish", fmt.Sprintf("%d:8080", published)).want(t, 0)
	u.banger("vm", "exec", "web", "--", "httpd", "-p", "8080", "-h", "/").want(t, 0)
	u.banger("vm", "run", "-d", "--name", "allowed", "--allow-host", loopPort).want(t, 0)

	// The published port serves the host's users.
	var c net.Conn
	if err := u.host.do(func() (err error) {
		c, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", published), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("the published port, from the host: %v", err)
	}
	c.Close()

	gateway := func(port string) string { return net.JoinHostPort("10.0.2.2", port) }
	for _, vm := range []string{"web", "allowed"} {
		if !u.reaches(vm, outside) {
			t.Errorf("%s does not reach the outside world (%s)", vm, outside)
		}
		if u.reaches(vm, gateway(fmt.Sprint(published))) {
			t.Errorf("%s reaches a published port through the gateway", vm)
		}
		if u.reaches(vm, ownAddr) {
			t.Errorf("%s reaches the host's own address (%s)", vm, ownAddr)
		}
		if u.reaches(vm, metadata) {
			t.Errorf("%s reaches the link-local metadata address", vm)
		}
	}
	if u.reaches("web", gateway(loopPort)) {
		t.Errorf("a default guest reaches the host's loopback port %s", loopPort)
	}
	if !u.reaches("allowed", gateway(loopPort)) {
		t.Errorf("--allow-host %s: the guest does not reach it", loopPort)
	}
	var vm struct {
		AllowHost []int `json:"allow_host"`
	}
	u.banger("vm", "show", "--json", "allowed").want(t, 0).json(t, &vm)
	if fmt.Sprint(vm.AllowHost) != "["+loopPort+"]" {
		t.Errorf("vm show: allow_host %v, want [%s]", vm.AllowHost, loopPort)
	}

	// A daemon that restarts connects the running VMs' networks again,
	// with their published ports and allowed ports.
	d.Process.Kill()
	// startProcess waits for it; a second Wait would return at once.
	waitFor(t, 30*time.Second, func() bool { return syscall.Kill(d.Process.Pid, 0) != nil })
	u.daemon()
	if !u.reaches("allowed", outside) || !u.reaches("allowed", gateway(loopPort)) {
		t.Errorf("after a daemon restart, the guest lost its network")
	}
	if u.reaches("web", gateway(loopPort)) {
		t.Errorf("after a daemon restart, a default guest reaches the host's loopback")
	}
	if err := u.host.do(func() (err error) {
		c, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", published), 5*time.Second)
		return err
	}); err != nil {
		t.Errorf("after a daemon restart, the published port: %v", err)
	} else {
		c.Close()
	}

	// --allow-host is for the user network, and a port is a port.
	for _, args := range [][]string{
		{"--network", "bridge", "--allow-host", "22"},
		{"--allow-host", "0"},
		{"--allow-host", "65536"},
	} {
		if r := u.banger(append([]string{"vm", "create", "--no-start"}, args...)...); r.code != 2 || !strings.Contains(r.stderr, "allow-host") {
			t.Errorf("vm create %v: exit %d (%s), want 2 and an error naming --allow-host", args, r.code, r.stderr)
		}
	}
}
