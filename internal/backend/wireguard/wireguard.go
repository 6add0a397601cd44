// Package wireguard is flannel's "wireguard" backend: pod traffic between
// nodes goes encrypted through WireGuard devices, one peer per remote node
// (its lease's PublicKey, endpoint PublicIP:Port, AllowedIPs its pod
// subnets only). The lease carries flannel's BackendData
// {"PublicKey":"…","Port":51820} and, with IPv6, BackendV6Data
// {"PublicKey":"…","Port":51821}, so weft and flannel nodes peer together.
//
// Backend.Mode picks the devices, as flannel: "separate" (the default)
// runs flannel-wg for IPv4 and flannel-wg-v6 for IPv6, each with its own
// listen port (ListenPort, ListenPortV6) and peers of its family; "auto",
// "ipv4" and "ipv6" run flannel-wg alone, carrying both families, its
// peers dialled over the family the mode names (auto: chosen per peer).
//
// A device is the kernel's where the wireguard module exists, else
// wireguard-go running inside weftd on a TUN device (with the TUN's
// offloads and the socket's batching). Both are configured the same way:
// through wgctrl, which talks netlink to the kernel's and the UAPI socket
// /var/run/wireguard/<device>.sock to weftd's. desired.go computes the
// peers (pure); wireguard_linux.go converges the devices to them.
package wireguard

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"

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

// Identities names the public keys a lease publishes, which no other lease
// may (package admit: the older lease keeps it): a copied key would make
// its holder receive the real node's traffic. Both blobs of a dual-stack
// lease carry one key (flannel uses one for both devices); an IPv6-only
// lease has only BackendV6Data.
func Identities(l lease.Lease) []string {
	if l.Attrs.BackendType != config.BackendWireGuard {
		return nil
	}
	var out []string
	add := func(raw json.RawMessage) {
		if k, _, err := ParseLeaseData(raw); err == nil && !slices.Contains(out, "WireGuard key "+k.String()) {
			out = append(out, "WireGuard key "+k.String())
		}
	}
	if l.Subnet.IsValid() {
		add(l.Attrs.BackendData)
	}
	if l.IPv6Subnet.IsValid() {
		add(l.Attrs.BackendV6Data)
	}
	return out
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

// Device is one WireGuard device a mode runs: its name, listen port and
// the address families whose pod subnets it carries.
type Device struct {
	Name       string
	Port       int
	IPv4, IPv6 bool
}

// Devices returns the devices n's wireguard config runs, as flannel makes
// them: in mode separate flannel-wg (ListenPort) for IPv4 and
// flannel-wg-v6 (ListenPortV6) for IPv6, as the network enables them;
// in the other modes flannel-wg alone on ListenPort, with both families.
func Devices(n *config.Network) []Device {
	if n == nil {
		return nil
	}
	v4 := n.EnableIPv4 && n.Network.IsValid()
	v6 := n.EnableIPv6 && n.IPv6Network.IsValid()
	port, port6 := listenPorts(n)
	switch n.Backend.Mode {
	case "", config.WireGuardSeparate:
		var out []Device
		if v4 {
			out = append(out, Device{Name: DeviceName, Port: port, IPv4: true})
		}
		if v6 {
			out = append(out, Device{Name: DeviceNameV6, Port: port6, IPv6: true})
		}
		return out
	}
	if !v4 && !v6 {
		return nil
	}
	return []Device{{Name: DeviceName, Port: port, IPv4: v4, IPv6: v6}}
}

// listenPorts are n's ListenPort and ListenPortV6, flannel's defaults
// where unset.
func listenPorts(n *config.Network) (port, port6 int) {
	port, port6 = n.Backend.ListenPort, n.Backend.ListenPortV6
	if port == 0 {
		port = config.DefaultWireGuardPort
	}
	if port6 == 0 {
		port6 = config.DefaultWireGuardPortV6
	}
	return port, port6
}

// DeviceFor is the device that carries a family's pod traffic under n
// ("" when none does): flannel-wg for IPv4, and for IPv6 flannel-wg-v6
// in mode separate, else flannel-wg.
func DeviceFor(n *config.Network, v6 bool) string {
	for _, d := range Devices(n) {
		if v6 && d.IPv6 || !v6 && d.IPv4 {
			return d.Name
		}
	}
	return ""
}

// settings are what the backend derives from its parameters.
type settings struct {
	devices   []Device
	port      int // flannel-wg's (ListenPort): BackendData's Port
	port6     int // ListenPortV6: BackendV6Data's Port, in every mode (flannel's)
	mtu       int // of every device, and pods'
	keepalive int // seconds
	psk       *wgtypes.Key
	mode      string
	impl      string // auto, kernel or userspace
	v4, v6    bool   // families the network carries
}

func deriveSettings(p backend.Params) (settings, error) {
	if p.Network == nil {
		return settings{}, errors.New("wireguard: no network config")
	}
	n := p.Network
	b := n.Backend
	s := settings{
		keepalive: b.PersistentKeepaliveInterval, mode: b.Mode, impl: b.Implementation,
		v4: n.EnableIPv4 && n.Network.IsValid(), v6: n.EnableIPv6 && n.IPv6Network.IsValid(),
	}
	s.port, s.port6 = listenPorts(n)
	if s.mode == "" {
		s.mode = config.WireGuardSeparate
	}
	if s.impl == "" {
		s.impl = config.WireGuardImplAuto
	}
	switch {
	case !s.v4 && !s.v6:
		return settings{}, errors.New("wireguard: the network config enables no family with a network (Network, or EnableIPv6 with IPv6Network)")
	case s.mode == config.WireGuardIPv4 && !s.v4:
		// flannel would dial every peer at 0.0.0.0.
		return settings{}, errors.New(`wireguard: Backend.Mode "ipv4" dials peers' PublicIP, which a network without IPv4 (EnableIPv4 false) does not have: use "separate", "auto" or "ipv6"`)
	case s.mode == config.WireGuardIPv6 && !s.v6:
		return settings{}, errors.New(`wireguard: Backend.Mode "ipv6" dials peers' PublicIPv6, which needs EnableIPv6 with IPv6Network: use "separate", "auto" or "ipv4"`)
	}
	if b.PSK != "" {
		k, err := wgtypes.ParseKey(b.PSK)
		if err != nil {
			return settings{}, fmt.Errorf("wireguard: Backend.PSK: %w", err)
		}
		s.psk = &k
	}
	// As flannel: MTU (else the underlay's) less the overhead, for the
	// devices and for pods alike.
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
	s.devices = Devices(n)
	return s, nil
}

// portQuirk says why, in a single-device mode with IPv6, peers dialled
// over IPv6 will not answer: flannel dials them on the Port of their
// BackendV6Data, ListenPortV6, while their one device listens on
// ListenPort. "" when the ports agree or no peer is dialled over IPv6.
func (s settings) portQuirk() string {
	if s.mode == config.WireGuardSeparate || !s.v6 || s.port == s.port6 || s.mode == config.WireGuardIPv4 {
		return ""
	}
	return fmt.Sprintf("Backend.Mode %q runs one device on ListenPort %d, but peers dialled over IPv6 are dialled on their BackendV6Data's Port, ListenPortV6 %d, as flannel does: set ListenPortV6 to %d, or those peers never answer",
		s.mode, s.port, s.port6, s.port)
}
