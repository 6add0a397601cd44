package wireguard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/netlinkx"
)

// errNoKernel says the kernel has no WireGuard (no module).
var errNoKernel = errors.New("the kernel has no WireGuard (module wireguard missing)")

// createKernel makes the kernel device name:
//
//	ip link add NAME mtu MTU type wireguard
//
// An EOPNOTSUPP (no module to load) is errNoKernel.
func createKernel(h *netlinkx.Handle, name string, mtu int) error {
	la := netlinkx.NewLinkAttrs()
	la.Name, la.MTU = name, mtu
	err := h.LinkAdd(&netlinkx.Wireguard{LinkAttrs: la})
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EAFNOSUPPORT) {
		return fmt.Errorf("%w: %v", errNoKernel, err)
	}
	return err
}

// userDevice is wireguard-go running in this process on the TUN device
// name, serving the UAPI socket /var/run/wireguard/<name>.sock through
// which wgctrl (and wg(8)) configure it.
type userDevice struct {
	dev  *device.Device
	uapi net.Listener

	mu     sync.Mutex // held by a delayed kick, so that it never runs on a closed device
	closed bool
}

// startUserspace opens (or re-attaches to) the TUN device name and runs
// wireguard-go on it. The TUN is persistent: when weftd exits, it stays
// with its address and route, so pod packets to other nodes go into it
// and are dropped there, not out by the default route in clear.
func startUserspace(name string, mtu int, log *slog.Logger, drops *userDrops) (*userDevice, error) {
	fd, err := backend.OpenTUN(name)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	t, err := tun.CreateTUNFromFile(os.NewFile(uintptr(fd), "/dev/net/tun"), mtu)
	if err != nil {
		return nil, fmt.Errorf("TUN %s: %w", name, err)
	}
	wlog := log.With("wireguard-go", name)
	dev := device.NewDevice(t, conn.NewDefaultBind(), &device.Logger{
		Verbosef: func(format string, args ...any) {
			if drops.count(format) || isRoutine(format) {
				return
			}
			if wlog.Enabled(context.Background(), slog.LevelDebug) {
				wlog.Debug(fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) { wlog.Warn(fmt.Sprintf(format, args...)) },
	})
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("UAPI socket for %s: %w", name, err)
	}
	l, err := ipc.UAPIListen(name, f)
	if err != nil {
		f.Close()
		dev.Close()
		return nil, fmt.Errorf("UAPI socket for %s: %w", name, err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return // closed
			}
			go dev.IpcHandle(c)
		}
	}()
	return &userDevice{dev: dev, uapi: l}, nil
}

// stopped reports whether wireguard-go stopped by itself (its TUN device
// was deleted).
func (u *userDevice) stopped() bool {
	select {
	case <-u.dev.Wait():
		return true
	default:
		return false
	}
}

// kickDelay is how long the device whose public key sorts higher waits
// before it starts a handshake with a peer it just set.
const kickDelay = 250 * time.Millisecond

// kick sends each of peers a keepalive, which starts a handshake where
// there is no session: a peer that still holds a session with this
// device's previous incarnation (weftd restarted, or the device was
// re-created) would otherwise keep sending into it until WireGuard's
// own rekey timeout, about 15 s later.
//
// Of two devices, only the one whose key sorts lower kicks at once. Two
// initiations that cross in flight stall both ends: each consumes the
// other's initiation, which overwrites its own handshake state, so each
// refuses the response to its own and waits, as responder, for data that
// the other will not send until REKEY_TIMEOUT (5 s) later. Two nodes that
// see each other's leases at the same moment (started together) would
// do exactly that. The higher one kicks after kickDelay: by then the
// lower one's handshake has finished, and its keepalive only rides the
// session; or the lower one's initiation was dropped (this device did
// not have the peer yet), and this one starts it.
func (u *userDevice) kick(own wgtypes.Key, peers []wgtypes.Key) {
	var later []wgtypes.Key
	for _, k := range peers {
		if bytes.Compare(own[:], k[:]) > 0 {
			later = append(later, k)
			continue
		}
		u.keepalive(k)
	}
	if len(later) == 0 {
		return
	}
	time.AfterFunc(kickDelay, func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.closed {
			return
		}
		for _, k := range later {
			u.keepalive(k)
		}
	})
}

func (u *userDevice) keepalive(k wgtypes.Key) {
	if p := u.dev.LookupPeer(device.NoisePublicKey(k)); p != nil {
		p.SendKeepalive()
	}
}

// Close stops wireguard-go and removes the socket. The TUN device stays.
func (u *userDevice) Close() {
	u.mu.Lock()
	u.closed = true
	u.mu.Unlock()
	if u.uapi != nil {
		u.uapi.Close()
	}
	u.dev.Close()
}
