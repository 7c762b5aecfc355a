package usernet

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// frame is one frame as QEMU's stream netdev sends it.
func frame(b []byte) []byte {
	out := binary.BigEndian.AppendUint32(nil, uint32(len(b)))
	return append(out, b...)
}

var guestMAC = []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

// arpWhoHas is the guest's ARP request for addr.
func arpWhoHas(addr netip.Addr) []byte {
	var b bytes.Buffer
	b.Write([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	b.Write(guestMAC)
	b.Write([]byte{0x08, 0x06})                   // ARP
	b.Write([]byte{0, 1, 0x08, 0x00, 6, 4, 0, 1}) // Ethernet, IPv4, request
	b.Write(guestMAC)                             // sender
	b.Write(guestNet.Address.Addr().AsSlice())    //
	b.Write([]byte{0, 0, 0, 0, 0, 0})             // target
	b.Write(addr.AsSlice())                       //
	return b.Bytes()
}

// The guest picks each frame's length: runts and frames past the limit
// are skipped (never allocated), and the frames after them are served,
// here an ARP request for the gateway.
func TestHostileFramesAreDropped(t *testing.T) {
	n, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	guest, host := net.Pipe()
	defer guest.Close()
	if err := n.Attach(host); err != nil {
		t.Fatal(err)
	}
	go func() {
		guest.Write(frame(nil))
		guest.Write(frame([]byte{1, 2, 3, 4, 5}))
		guest.Write(frame(make([]byte, 13)))
		guest.Write(frame(make([]byte, maxFrame+1)))
		guest.Write(frame(arpWhoHas(guestNet.Gateway)))
	}()
	// Read what comes back until the gateway's ARP reply.
	guest.SetReadDeadline(time.Now().Add(10 * time.Second))
	var reply []byte
	for {
		var size [4]byte
		if _, err := io.ReadFull(guest, size[:]); err != nil {
			t.Fatalf("no answer after the hostile frames: %v", err)
		}
		reply = make([]byte, binary.BigEndian.Uint32(size[:]))
		if _, err := io.ReadFull(guest, reply); err != nil {
			t.Fatal(err)
		}
		if len(reply) >= 14 && bytes.Equal(reply[12:14], []byte{0x08, 0x06}) {
			break
		}
	}
	gw := []byte(gatewayMAC)
	// Ethernet to the guest, ARP; a reply (2) from the gateway's MAC for
	// the gateway's address.
	if !bytes.Equal(reply[0:6], guestMAC) || !bytes.Equal(reply[12:14], []byte{0x08, 0x06}) ||
		binary.BigEndian.Uint16(reply[20:22]) != 2 || !bytes.Equal(reply[22:28], gw) ||
		!bytes.Equal(reply[28:32], guestNet.Gateway.AsSlice()) {
		t.Errorf("the answer is not the gateway's ARP reply: % x", reply)
	}
}

func TestDialTarget(t *testing.T) {
	n, err := New(Config{AllowHost: []int{8080}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	resolvConf = filepath.Join(t.TempDir(), "resolv.conf")
	defer func() { resolvConf = "/etc/resolv.conf" }()
	os.WriteFile(resolvConf, []byte("# a comment\nnameserver fe80::1\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n"), 0o644)
	loop := netip.MustParseAddr("127.0.0.1")
	for _, c := range []struct {
		dst  string
		port uint16
		want string // "" refused
	}{
		{"10.0.2.2", 8080, "127.0.0.1:8080"},
		{"10.0.2.2", 8081, ""},
		{"10.0.2.2", 22, ""},
		{"10.0.2.3", 53, "192.0.2.53:53"}, // the relay to the host's resolver
		{"10.0.2.3", 80, ""},
		{"10.0.2.4", 80, ""},
		{"127.0.0.1", 8080, ""},
		{"127.1.2.3", 80, ""},
		{"0.0.0.0", 8080, ""},
		{"0.1.2.3", 80, ""},
		{"169.254.169.254", 80, ""},
		{"224.0.0.251", 5353, ""},
		{"255.255.255.255", 67, ""},
		{"240.0.0.1", 80, ""},
		{"192.0.2.200", 443, "192.0.2.200:443"},
		{"10.1.2.3", 80, "10.1.2.3:80"},
		{"198.51.100.7", 53, "198.51.100.7:53"},
	} {
		to, ok := n.dialTarget(netip.MustParseAddr(c.dst), c.port)
		got := ""
		if ok {
			got = to.String()
		}
		if got != c.want {
			t.Errorf("%s:%d dialed as %q, want %q", c.dst, c.port, got, c.want)
		}
	}
	// The host's own addresses, whatever they are here.
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		h, ok2 := netip.AddrFromSlice(ipn.IP)
		if !ok || !ok2 || !h.Unmap().Is4() || h == loop {
			continue
		}
		if _, ok := n.dialTarget(h.Unmap(), 22); ok {
			t.Errorf("the host's own address %s is dialed", h)
		}
	}
	// Allowed ports change on a running network.
	if err := n.AllowHost([]int{9000}); err != nil {
		t.Fatal(err)
	}
	if _, ok := n.dialTarget(guestNet.Gateway, 8080); ok {
		t.Error("a port no longer allowed is dialed")
	}
	if to, ok := n.dialTarget(guestNet.Gateway, 9000); !ok || to.String() != "127.0.0.1:9000" {
		t.Errorf("the newly allowed port: %v %v", to, ok)
	}
	if err := n.AllowHost([]int{0}); err == nil {
		t.Error("port 0 allowed")
	}
}
