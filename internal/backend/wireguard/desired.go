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

// Params is what Desired needs besides the leases.
type Params struct {
	Network  netip.Prefix // cluster network: remote subnets lie inside it
	Own      netip.Prefix // this node's subnet
	OwnKey   wgtypes.Key  // this node's public key: a lease with it is ours
	PublicIP netip.Addr   // this node's
	// Port is this node's listen port, dialled when a lease says Port 0
	// (flannel before v0.26 published none).
	Port int
}

// Desired computes the peers for the lease set (own excluded), sorted by
// public key. Leases that cannot be peers are returned as errors, one per
// lease, and left out; so is the second of two leases with one key (a
// WireGuard peer is its key), which keeps the one with the lower subnet.
func Desired(p Params, leases []lease.Lease) ([]Peer, []*backend.LeaseError) {
	sorted := slices.Clone(leases)
	slices.SortFunc(sorted, func(a, b lease.Lease) int { return a.Subnet.Addr().Compare(b.Subnet.Addr()) })
	var peers []Peer
	var skipped []*backend.LeaseError
	byKey := make(map[wgtypes.Key]netip.Prefix)
	for _, l := range sorted {
		if l.Subnet == p.Own || !l.Subnet.IsValid() {
			continue // ourselves, or an IPv6-only lease
		}
		peer, err := peerOf(p, l)
		if err == nil {
			if first, dup := byKey[peer.PublicKey]; dup {
				err = fmt.Errorf("PublicKey %s is also %s's (a stale lease of that node?)", peer.PublicKey, first)
			}
		}
		if err != nil {
			skipped = append(skipped, &backend.LeaseError{Subnet: l.Subnet, Err: err})
			continue
		}
		byKey[peer.PublicKey] = l.Subnet
		peers = append(peers, peer)
	}
	slices.SortFunc(peers, func(a, b Peer) int { return cmp.Compare(a.PublicKey.String(), b.PublicKey.String()) })
	return peers, skipped
}

func peerOf(p Params, l lease.Lease) (Peer, error) {
	pub := l.Attrs.PublicIP
	switch {
	case !backend.Manages(p.Network, p.Own, l.Subnet):
		return Peer{}, fmt.Errorf("subnet is not inside the cluster network %s", p.Network)
	case l.Attrs.BackendType != config.BackendWireGuard:
		return Peer{}, fmt.Errorf("backend type %q, not %q: this node cannot reach it", l.Attrs.BackendType, config.BackendWireGuard)
	case !pub.Is4() || pub.IsUnspecified():
		return Peer{}, fmt.Errorf("PublicIP %v is not a usable IPv4 address", pub)
	case pub == p.PublicIP:
		return Peer{}, fmt.Errorf("PublicIP %s is this node's own (a stale lease of this node?)", pub)
	}
	key, port, err := ParseLeaseData(l.Attrs.BackendData)
	if err != nil {
		return Peer{}, err
	}
	if key == p.OwnKey {
		return Peer{}, fmt.Errorf("PublicKey %s is this node's own", key)
	}
	if port == 0 {
		port = uint16(p.Port)
	}
	return Peer{PublicKey: key, Endpoint: netip.AddrPortFrom(pub, port), AllowedIPs: []netip.Prefix{l.Subnet.Masked()}}, nil
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
