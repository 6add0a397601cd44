package netlinkx_test

import (
	"net"
	"net/netip"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/netlinkx"
)

// listenBuf binds a UDP socket on addr (port 0) asking for rcv and snd
// bytes of buffer, as wireguard-go's StdNetBind asks for its own.
func listenBuf(t *testing.T, network, addr string, rcv, snd int) *net.UDPConn {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcv)
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, snd)
		})
	}}
	pc, err := lc.ListenPacket(t.Context(), network, addr)
	if err != nil {
		t.Skipf("no %s socket on %s here: %v", network, addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.(*net.UDPConn)
}

// TestUDPSockets reads back, through sock_diag, the buffers the kernel
// gave sockets of both families: twice what was asked for, below
// rmem_max/wmem_max (the smallest default is 212992).
func TestUDPSockets(t *testing.T) {
	c4 := listenBuf(t, "udp4", "127.0.0.1:0", 65536, 32768)
	port := c4.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	c6 := listenBuf(t, "udp6", netip.AddrPortFrom(netip.IPv6Loopback(), port).String(), 40000, 50000)
	other := listenBuf(t, "udp4", "127.0.0.1:0", 65536, 65536)

	got, err := netlinkx.UDPSockets(port)
	if err != nil {
		t.Fatal(err)
	}
	want := map[netip.AddrPort][2]int{
		c4.LocalAddr().(*net.UDPAddr).AddrPort(): {2 * 65536, 2 * 32768},
		c6.LocalAddr().(*net.UDPAddr).AddrPort(): {2 * 40000, 2 * 50000},
	}
	if len(got) != len(want) {
		t.Fatalf("port %d: got %+v, want the sockets %v (not %s)", port, got, want, other.LocalAddr())
	}
	for _, s := range got {
		w, ok := want[s.Local]
		if !ok || s.RcvBuf != w[0] || s.SndBuf != w[1] {
			t.Errorf("socket %+v, want buffers %v of %v", s, w, want)
		}
	}
}
