// Package wireguard is flannel's "wireguard" backend: pod traffic between
// nodes goes encrypted through a WireGuard device flannel-wg, one peer per
// remote node (its lease's PublicKey, endpoint PublicIP:Port, AllowedIPs its
// pod subnet only). The lease carries flannel's BackendData
// {"PublicKey":"…","Port":51820}, so weft and flannel nodes peer together.
//
// The device is the kernel's where the wireguard module exists, else
// wireguard-go running inside weftd on a TUN device (with the TUN's
// offloads and the socket's batching). Both are configured the same way:
// through wgctrl, which talks netlink to the kernel's and the UAPI socket
// /var/run/wireguard/flannel-wg.sock to weftd's. desired.go computes the
// peers (pure); wireguard_linux.go converges the device to them.
package wireguard

import (
	"encoding/json"
	"errors"
	"fmt"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

const (
	// DeviceName is flannel's name for the (IPv4) device.
	DeviceName = "flannel-wg"
	// DeviceNameV6 is flannel's IPv6 device in separate mode.
	DeviceNameV6 = "flannel-wg-v6"
	// Overhead is flannel's figure for what WireGuard adds to a packet:
	// outer IPv6 header 40, UDP 8, type 4, key index 4, nonce 8, tag 16.
	Overhead = 80
	// DefaultKeyFile is where flannel keeps the node's private key.
	DefaultKeyFile = "/run/flannel/wgkey"
	// KeyFileEnv overrides DefaultKeyFile, as in flannel.
	KeyFileEnv = "WIREGUARD_KEY_FILE"

	minMTU = 1280 // WireGuard's own minimum (IPv6's)
)

// Implementations (what weftd logs, /metrics labels and doctor shows).
const (
	ImplKernel    = config.WireGuardImplKernel
	ImplUserspace = config.WireGuardImplUserspace
)

// LeaseData is the BackendData of a wireguard lease, flannel's, in
// flannel's field order.
type LeaseData struct {
	PublicKey string
	Port      uint16
}

// Identities names the public key a lease publishes, which no other lease
// may (package admit: the older lease keeps it): a copied key would make
// its holder receive the real node's traffic.
func Identities(l lease.Lease) []string {
	if l.Attrs.BackendType != config.BackendWireGuard {
		return nil
	}
	if k, _, err := ParseLeaseData(l.Attrs.BackendData); err == nil {
		return []string{"WireGuard key " + k.String()}
	}
	return nil
}

// Marshal returns the BackendData bytes: {"PublicKey":"…","Port":51820}.
func (d LeaseData) Marshal() (json.RawMessage, error) {
	return json.Marshal(d)
}

// ParseLeaseData reads a wireguard BackendData blob.
func ParseLeaseData(raw json.RawMessage) (wgtypes.Key, uint16, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return wgtypes.Key{}, 0, errors.New("no BackendData (PublicKey)")
	}
	var d LeaseData
	if err := json.Unmarshal(raw, &d); err != nil {
		// Clipped: a hostile value of a megabyte would be logged whole.
		return wgtypes.Key{}, 0, fmt.Errorf("BackendData %s: %s", lease.Clip(string(raw)), lease.Clip(err.Error()))
	}
	k, err := wgtypes.ParseKey(d.PublicKey)
	if err != nil {
		return wgtypes.Key{}, 0, fmt.Errorf("BackendData PublicKey %q: %w", lease.Clip(d.PublicKey), err)
	}
	return k, d.Port, nil
}

// settings are what the backend derives from its parameters.
type settings struct {
	port      int
	mtu       int
	keepalive int // seconds
	psk       *wgtypes.Key
	mode      string
	impl      string // auto, kernel or userspace
}

func deriveSettings(p backend.Params) (settings, error) {
	if p.Network == nil || !p.Network.EnableIPv4 || !p.Network.Network.IsValid() {
		return settings{}, errors.New("wireguard: no IPv4 cluster network configured (weft's wireguard backend carries IPv4 until dual stack lands)")
	}
	b := p.Network.Backend
	s := settings{port: b.ListenPort, keepalive: b.PersistentKeepaliveInterval, mode: b.Mode, impl: b.Implementation}
	if s.port == 0 {
		s.port = config.DefaultWireGuardPort
	}
	if s.mode == "" {
		s.mode = config.WireGuardSeparate
	}
	if s.impl == "" {
		s.impl = config.WireGuardImplAuto
	}
	if s.mode == config.WireGuardIPv6 {
		return settings{}, errors.New("wireguard: Backend.Mode \"ipv6\" needs IPv6 leases, which weft does not carry yet")
	}
	if b.PSK != "" {
		k, err := wgtypes.ParseKey(b.PSK)
		if err != nil {
			return settings{}, fmt.Errorf("wireguard: Backend.PSK: %w", err)
		}
		s.psk = &k
	}
	// As flannel: MTU (else the underlay's) less the overhead, for the
	// device and for pods alike.
	ext := b.MTU
	if ext == 0 {
		if p.Ext.MTU <= 0 {
			return settings{}, fmt.Errorf("wireguard: MTU of %s unknown and Backend.MTU not set", p.Ext.Name)
		}
		ext = p.Ext.MTU
	}
	s.mtu = ext - Overhead
	if s.mtu < minMTU {
		return settings{}, fmt.Errorf("wireguard: device MTU %d (%d less %d) is below WireGuard's minimum %d", s.mtu, ext, Overhead, minMTU)
	}
	return s, nil
}
