package wireguard

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// kickNode is a wireguard-go device on a channel TUN and a real UDP socket
// on loopback: the handshake runs exactly as on a node, with no root.
type kickNode struct {
	priv wgtypes.Key
	tun  *tuntest.ChannelTUN
	u    *userDevice
	addr netip.Addr // its "pod" address, routed to it by the other's AllowedIPs
	port string
}

func newKickNode(t *testing.T, priv wgtypes.Key, addr netip.Addr) *kickNode {
	t.Helper()
	n := &kickNode{priv: priv, tun: tuntest.NewChannelTUN(), addr: addr}
	dev := device.NewDevice(n.tun.TUN(), conn.NewDefaultBind(), device.NewLogger(device.LogLevelError, ""))
	n.u = &userDevice{dev: dev}
	t.Cleanup(n.u.Close)
	if err := dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=0\n", hex.EncodeToString(priv[:]))); err != nil {
		t.Fatal(err)
	}
	if err := dev.Up(); err != nil {
		t.Fatal(err)
	}
	get, err := dev.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(get, "\n") {
		if p, ok := strings.CutPrefix(l, "listen_port="); ok {
			n.port = p
		}
	}
	return n
}

// setPeer makes m a peer of n, as a reconcile does.
func (n *kickNode) setPeer(t *testing.T, m *kickNode) {
	t.Helper()
	pub := m.priv.PublicKey()
	cfg := fmt.Sprintf("public_key=%s\nendpoint=127.0.0.1:%s\nallowed_ip=%s/32\n", hex.EncodeToString(pub[:]), m.port, m.addr)
	if err := n.u.dev.IpcSet(cfg); err != nil {
		t.Fatal(err)
	}
}

// crosses reports whether a packet n's TUN sends reaches m's within d,
// without m sending anything (a retry is a new packet, as a ping's).
func (n *kickNode) crosses(m *kickNode, d time.Duration) bool {
	deadline := time.After(d)
	for {
		n.tun.Outbound <- tuntest.Ping(m.addr, n.addr)
		select {
		case <-m.tun.Inbound:
			return true
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			return false
		}
	}
}

// ordered returns two private keys, the first with the lower public key.
func ordered(t *testing.T) (lo, hi wgtypes.Key) {
	t.Helper()
	a, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	pa, pb := a.PublicKey(), b.PublicKey()
	if strings.Compare(string(pa[:]), string(pb[:])) > 0 {
		a, b = b, a
	}
	return a, b
}

// Two devices that set each other and kick at the same moment: with both
// kicking at once, about one pair in eight stalled for WireGuard's 5 s
// REKEY_TIMEOUT (crossed initiations); with the tie-break none may.
func TestKickTogether(t *testing.T) {
	const trials = 30
	for i := range trials {
		lo, hi := ordered(t)
		a := newKickNode(t, lo, netip.MustParseAddr("10.0.0.1"))
		b := newKickNode(t, hi, netip.MustParseAddr("10.0.0.2"))
		a.setPeer(t, b)
		b.setPeer(t, a)
		var wg sync.WaitGroup
		for _, n := range []*kickNode{a, b} {
			other := a
			if n == a {
				other = b
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				n.u.kick(n.priv.PublicKey(), []wgtypes.Key{other.priv.PublicKey()})
			}()
		}
		wg.Wait()
		if !a.crosses(b, time.Second) || !b.crosses(a, time.Second) {
			t.Fatalf("trial %d of %d: no session within 1 s of two simultaneous kicks", i+1, trials)
		}
		a.u.Close()
		b.u.Close()
	}
}

// A device re-created (weftd restarted) while its peer keeps the old
// session: whichever end's key sorts higher, its kick must start a new
// handshake, so that the peer's traffic, which flows into the old
// session, crosses again well before WireGuard's own ~15 s.
func TestKickAfterRestart(t *testing.T) {
	for _, restartHigher := range []bool{false, true} {
		t.Run(fmt.Sprintf("higher=%v", restartHigher), func(t *testing.T) {
			lo, hi := ordered(t)
			keep, gone := lo, hi
			if !restartHigher {
				keep, gone = hi, lo
			}
			peer := newKickNode(t, keep, netip.MustParseAddr("10.0.0.1"))
			old := newKickNode(t, gone, netip.MustParseAddr("10.0.0.2"))
			peer.setPeer(t, old)
			old.setPeer(t, peer)
			if !peer.crosses(old, time.Second) {
				t.Fatal("no first session")
			}
			old.u.Close()

			// The new incarnation: same key and address, a new port.
			renewed := newKickNode(t, gone, old.addr)
			renewed.setPeer(t, peer)
			peer.setPeer(t, renewed) // the new endpoint, as its lease says
			renewed.u.kick(gone.PublicKey(), []wgtypes.Key{keep.PublicKey()})
			if !peer.crosses(renewed, time.Second) {
				t.Fatal("the peer's traffic did not reach the re-created device within 1 s of its kick")
			}
		})
	}
}
