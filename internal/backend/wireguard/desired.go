package wireguard

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

// Peer is one remote node as the device must know it.
type Peer struct {
	PublicKey wgtypes.Key
	Endpoint  netip.AddrPort
	// AllowedIPs is the peer's pod subnet only: packets to it go to this
	// peer, and packets from this peer are accepted only with a source
	// inside it.
	AllowedIPs []netip.Prefix
}

// Equal reports whether p and o configure the device alike.
func (p Peer) Equal(o Peer) bool {
	return p.PublicKey == o.PublicKey && p.Endpoint == o.Endpoint && slices.Equal(p.AllowedIPs, o.AllowedIPs)
}

// Params is what Desired needs besides the leases. One call plans one
// device: its families (Device.IPv4, Device.IPv6) say which of a lease's
// subnets become AllowedIPs; Mode says over which family a peer is dialled
// when the device carries both.
type Params struct {
	Mode   string // config.WireGuardSeparate, Auto, IPv4 or IPv6
	Device Device
	// Network and Network6 are the cluster networks of the families:
	// remote subnets lie inside them.
	Network, Network6 netip.Prefix
	Own, Own6         netip.Prefix // this node's subnets
	OwnKey            wgtypes.Key  // this node's public key: a lease with it is ours
	// PublicIP and PublicIPv6 are this node's (invalid without the
	// family); auto mode weighs them as flannel does.
	PublicIP, PublicIPv6 netip.Addr
}

// Desired computes the peers of p.Device for the lease set (own excluded),
// sorted by public key. Leases that cannot be peers are returned as
// errors, one per lease, and left out; so is the second of two leases with
// one key (a WireGuard peer is its key), which keeps the one with the
// lower subnet. Leases without a subnet of the device's families are not
// its business.
func Desired(p Params, leases []lease.Lease) ([]Peer, []*backend.LeaseError) {
	sorted := slices.Clone(leases)
	slices.SortFunc(sorted, func(a, b lease.Lease) int {
		if c := a.Subnet.Addr().Compare(b.Subnet.Addr()); c != 0 {
			return c
		}
		return a.IPv6Subnet.Addr().Compare(b.IPv6Subnet.Addr())
	})
	var peers []Peer
	var skipped []*backend.LeaseError
	byKey := make(map[wgtypes.Key]string)
	for _, l := range sorted {
		v4 := p.Device.IPv4 && l.Subnet.IsValid()
		v6 := p.Device.IPv6 && l.IPv6Subnet.IsValid()
		if !v4 && !v6 || v4 && l.Subnet == p.Own || v6 && l.IPv6Subnet == p.Own6 {
			continue // ourselves, or no subnet of the device's families
		}
		peer, err := peerOf(p, l, v4, v6)
		if err == nil {
			if first, dup := byKey[peer.PublicKey]; dup {
				err = fmt.Errorf("PublicKey %s is also lease %s's (a stale lease of that node?)", peer.PublicKey, first)
			}
		}
		if err != nil {
			sn := l.Subnet
			if !v4 {
				sn = l.IPv6Subnet
			}
			skipped = append(skipped, &backend.LeaseError{Subnet: sn, Key: l.Key(), Err: err})
			continue
		}
		byKey[peer.PublicKey] = l.Key()
		peers = append(peers, peer)
	}
	slices.SortFunc(peers, func(a, b Peer) int { return cmp.Compare(a.PublicKey.String(), b.PublicKey.String()) })
	return peers, skipped
}

// peerOf makes the peer of l, whose v4 and v6 subnets the device carries
// as said.
func peerOf(p Params, l lease.Lease, v4, v6 bool) (Peer, error) {
	switch {
	case v4 && !backend.Manages(p.Network, p.Own, l.Subnet):
		return Peer{}, fmt.Errorf("subnet is not inside the cluster network %s", p.Network)
	case v6 && !backend.Manages(p.Network6, p.Own6, l.IPv6Subnet):
		return Peer{}, fmt.Errorf("IPv6 subnet %s is not inside the cluster IPv6 network %s", l.IPv6Subnet, p.Network6)
	case l.Attrs.BackendType != config.BackendWireGuard:
		return Peer{}, fmt.Errorf("backend type %q, not %q: this node cannot reach it", l.Attrs.BackendType, config.BackendWireGuard)
	}
	// Each family's blob as the lease has it; the key is the IPv6 one's
	// when the device carries IPv6, as flannel takes it (both blobs of a
	// node carry one key).
	var key wgtypes.Key
	var port4, port6 uint16
	if v4 {
		k, port, err := ParseLeaseData(l.Attrs.BackendData)
		if err != nil {
			return Peer{}, err
		}
		key, port4 = k, port
	}
	if v6 {
		k, port, err := ParseLeaseData(l.Attrs.BackendV6Data)
		if err != nil {
			return Peer{}, fmt.Errorf("BackendV6Data: %w", err)
		}
		key, port6 = k, port
	}
	if key == p.OwnKey {
		return Peer{}, fmt.Errorf("PublicKey %s is this node's own", key)
	}

	dial6, err := dialFamily(p, l)
	if err != nil {
		return Peer{}, err
	}
	// flannel before v0.26 published no Port: the device's own is dialled.
	var ep netip.AddrPort
	if dial6 {
		ep = netip.AddrPortFrom(*l.Attrs.PublicIPv6, cmp.Or(port6, uint16(p.Device.Port)))
	} else {
		ep = netip.AddrPortFrom(l.Attrs.PublicIP, cmp.Or(port4, uint16(p.Device.Port)))
	}
	peer := Peer{PublicKey: key, Endpoint: ep}
	if v4 {
		peer.AllowedIPs = append(peer.AllowedIPs, l.Subnet.Masked())
	}
	if v6 {
		peer.AllowedIPs = append(peer.AllowedIPs, l.IPv6Subnet.Masked())
	}
	return peer, nil
}

// dialFamily says whether l is dialled over IPv6, and checks that its
// address of that family is usable. A device of one family dials over it
// (mode separate); flannel-wg of the other modes over the family the mode
// names, or in auto mode as flannel chooses (autoIPv6). An auto choice
// whose address is unusable falls to the other family where flannel would
// dial 0.0.0.0 or nothing.
func dialFamily(p Params, l lease.Lease) (bool, error) {
	ok4 := usable(l.Attrs.PublicIP, false)
	ok6 := l.Attrs.PublicIPv6 != nil && usable(*l.Attrs.PublicIPv6, true)
	var dial6 bool
	switch {
	case !p.Device.IPv4:
		dial6 = true
	case !p.Device.IPv6:
		dial6 = false
	case p.Mode == config.WireGuardIPv6:
		dial6 = true
	case p.Mode == config.WireGuardIPv4:
		dial6 = false
	default:
		dial6 = autoIPv6(l.Attrs.PublicIP, l.Attrs.PublicIPv6, p.PublicIP, p.PublicIPv6)
		if dial6 && !ok6 && ok4 || !dial6 && !ok4 && ok6 {
			dial6 = !dial6
		}
	}
	if dial6 {
		switch {
		case !ok6:
			return true, fmt.Errorf("PublicIPv6 %v is not a usable IPv6 address", orNone(l.Attrs.PublicIPv6))
		case *l.Attrs.PublicIPv6 == p.PublicIPv6:
			return true, fmt.Errorf("PublicIPv6 %s is this node's own (a stale lease of this node?)", p.PublicIPv6)
		}
		return true, nil
	}
	switch {
	case !ok4:
		return false, fmt.Errorf("PublicIP %v is not a usable IPv4 address", l.Attrs.PublicIP)
	case l.Attrs.PublicIP == p.PublicIP:
		return false, fmt.Errorf("PublicIP %s is this node's own (a stale lease of this node?)", p.PublicIP)
	}
	return false, nil
}

func usable(a netip.Addr, v6 bool) bool {
	if v6 {
		return a.Is6() && !a.Is4In6() && !a.IsUnspecified()
	}
	return a.Is4() && !a.IsUnspecified()
}

func orNone(a *netip.Addr) any {
	if a == nil {
		return "none"
	}
	return *a
}

// autoIPv6 is flannel's choice of endpoint in auto mode (selectMode,
// wireguard_network.go): IPv4 when the peer has no IPv6 address, or has a
// public IPv4 one (outside RFC 1918) and this node has IPv4; else IPv6
// when the peer's IPv6 address and this node's are both public (outside
// fc00::/7); else IPv4.
func autoIPv6(peer4 netip.Addr, peer6 *netip.Addr, own4, own6 netip.Addr) bool {
	switch {
	case peer6 == nil:
		return false
	case !private4(peer4) && own4.IsValid() && !own4.IsUnspecified():
		return false
	case !private6(*peer6) && own6.IsValid() && !private6(own6):
		return true
	}
	return false
}

// private4 is flannel's IP4.IsPrivate: 10/8, 172.16/12, 192.168/16.
func private4(a netip.Addr) bool {
	if !a.Is4() {
		return false // flannel's zero IP4, 0.0.0.0
	}
	b := a.As4()
	return b[0] == 10 || b[0] == 172 && b[1]&0xf0 == 16 || b[0] == 192 && b[1] == 168
}

// private6 is flannel's IP6.IsPrivate, quirk included: it tests fc00::/7
// on the address's first non-zero byte (flannel reads it from a big.Int,
// which drops leading zero bytes), so ::fd00:1 counts as private too.
func private6(a netip.Addr) bool {
	for _, b := range a.As16() {
		if b != 0 {
			return b&0xfe == 0xfc
		}
	}
	return false // flannel panics on ::
}

// Change is what ConfigureDevice must be told to take the device's peers
// to the desired ones.
func Change(current []wgtypes.Peer, desired []Peer, keepalive time.Duration, psk *wgtypes.Key) []wgtypes.PeerConfig {
	have := make(map[wgtypes.Key]wgtypes.Peer, len(current))
	for _, c := range current {
		have[c.PublicKey] = c
	}
	want := make(map[wgtypes.Key]bool, len(desired))
	var out []wgtypes.PeerConfig
	for _, d := range desired {
		want[d.PublicKey] = true
		if c, ok := have[d.PublicKey]; ok && sameAs(c, d, keepalive, psk) {
			continue
		}
		ep := d.Endpoint
		pc := wgtypes.PeerConfig{
			PublicKey:                   d.PublicKey,
			Endpoint:                    netUDPAddr(ep),
			PersistentKeepaliveInterval: &keepalive,
			ReplaceAllowedIPs:           true,
			AllowedIPs:                  ipNets(d.AllowedIPs),
		}
		zero := wgtypes.Key{}
		if psk != nil {
			pc.PresharedKey = psk
		} else {
			pc.PresharedKey = &zero // clears one set before
		}
		out = append(out, pc)
	}
	for _, c := range current {
		if !want[c.PublicKey] {
			out = append(out, wgtypes.PeerConfig{PublicKey: c.PublicKey, Remove: true})
		}
	}
	return out
}

func sameAs(c wgtypes.Peer, d Peer, keepalive time.Duration, psk *wgtypes.Key) bool {
	wantPSK := wgtypes.Key{}
	if psk != nil {
		wantPSK = *psk
	}
	if c.PresharedKey != wantPSK || c.PersistentKeepaliveInterval != keepalive {
		return false
	}
	if c.Endpoint == nil {
		return false
	}
	if ep := c.Endpoint.AddrPort(); netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port()) != d.Endpoint {
		return false
	}
	var got []netip.Prefix
	for _, n := range c.AllowedIPs {
		if p, ok := netlinkx.PrefixOf(n); ok {
			got = append(got, p)
		}
	}
	slices.SortFunc(got, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return slices.Equal(got, d.AllowedIPs)
}
