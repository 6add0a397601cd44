// Package hostgw is the flannel-compatible host-gw backend: no device and no
// encapsulation, just a route per remote node's subnet via that node's
// PublicIP. It needs every node on one L2 segment. desired.go computes the
// routes (pure); hostgw_linux.go converges the kernel to them.
package hostgw

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netif"
	"github.com/weft-net/weft/internal/netlinkx"
)

// ErrNotAdjacent marks a remote lease refused because its node is not on
// this node's L2 segment.
var ErrNotAdjacent = errors.New("host-gw needs nodes on one L2 segment")

// Params is what Desired needs besides the leases, for one address family:
// IPv4 (the leases' Subnet via PublicIP) or, with IPv6, the leases'
// IPv6Subnet via PublicIPv6. The rules are the same for both.
type Params struct {
	IPv6     bool
	Network  netip.Prefix // cluster network of the family: remote subnets must lie inside it
	Own      netip.Prefix // this node's subnet of the family
	PublicIP netip.Addr   // this node's of the family: a lease naming it is not a remote node

	Underlay     int
	UnderlayName string
	// UnderlaySubnet is the underlay's on-link prefix of the family. A
	// remote PublicIP outside it is refused; when invalid (unknown) the
	// kernel judges.
	UnderlaySubnet netip.Prefix
}

// Desired computes `<subnet> via <PublicIP> dev <underlay>` for every remote
// lease (all but own). Leases it cannot use are returned as errors, one per
// lease, and left out; those refused for lack of L2 adjacency wrap
// ErrNotAdjacent.
func Desired(p Params, leases []lease.Lease) ([]netlinkx.Route, []*backend.LeaseError) {
	sorted := slices.Clone(leases)
	slices.SortFunc(sorted, func(a, b lease.Lease) int { return p.subnet(a).Addr().Compare(p.subnet(b).Addr()) })
	var routes []netlinkx.Route
	var skipped []*backend.LeaseError
	for _, l := range sorted {
		r, ok, err := route(p, l)
		switch {
		case err != nil:
			skipped = append(skipped, &backend.LeaseError{Subnet: p.subnet(l), Err: err})
		case ok:
			routes = append(routes, r)
		}
	}
	return routes, skipped
}

// subnet is l's subnet of p's family.
func (p Params) subnet(l lease.Lease) netip.Prefix {
	if p.IPv6 {
		return l.IPv6Subnet
	}
	return l.Subnet
}

// publicIP is l's public address of p's family; invalid if none.
func (p Params) publicIP(l lease.Lease) netip.Addr {
	if !p.IPv6 {
		return l.Attrs.PublicIP
	}
	if l.Attrs.PublicIPv6 == nil {
		return netip.Addr{}
	}
	return *l.Attrs.PublicIPv6
}

// route is the route to one remote lease, or why there is none; ok false
// with no error when l is not a remote lease (ourselves, or a lease
// without a subnet of the family).
func route(p Params, l lease.Lease) (r netlinkx.Route, ok bool, err error) {
	sn := p.subnet(l)
	if sn == p.Own || !sn.IsValid() {
		return r, false, nil
	}
	if err := checkRemote(p, l); err != nil {
		return r, false, err
	}
	return netlinkx.Route{Dst: sn, Gw: p.publicIP(l), LinkIndex: p.Underlay}, true, nil
}

func checkRemote(p Params, l lease.Lease) error {
	pub := p.publicIP(l)
	field, fam := "PublicIP", "IPv4"
	if p.IPv6 {
		field, fam = "PublicIPv6", "IPv6"
	}
	switch {
	case !backend.Manages(p.Network, p.Own, p.subnet(l)):
		return fmt.Errorf("subnet is not inside the cluster network %s", p.Network)
	case l.Attrs.BackendType != config.BackendHostGW:
		return fmt.Errorf("backend type %q, not %q: this node cannot reach it", l.Attrs.BackendType, config.BackendHostGW)
	case !pub.IsValid() || pub.Is4() == p.IPv6 || pub.IsUnspecified() || pub.Is4In6():
		return fmt.Errorf("%s %v is not a usable %s address", field, pub, fam)
	case pub == p.PublicIP:
		return fmt.Errorf("%s %s is this node's own (a stale lease of this node?)", field, pub)
	case p.UnderlaySubnet.IsValid() && !p.UnderlaySubnet.Contains(pub):
		return fmt.Errorf("%w: %s is not on %s's %s; use vxlan or DirectRouting", ErrNotAdjacent, pub, p.UnderlayName, p.UnderlaySubnet)
	}
	return nil
}

// podLink is what pods use: the pod MTU and, when the underlay carries BIG
// TCP, its GSO limit. host-gw forwards pods' packets to the underlay as
// they are, so a pod may build packets as large as the underlay takes
// whole; anything smaller would cost a trip through every extra hop (veth,
// bridge, forwarding, for data and ACKs alike) per 64 KiB instead of per
// GSO packet.
func podLink(ext netif.External, mtu int) backend.PodLink {
	pl := backend.PodLink{MTU: mtu}
	if ext.GSOIPv4MaxSize > backend.LegacyGSOMaxSize {
		pl.GSOIPv4MaxSize = ext.GSOIPv4MaxSize
	}
	return pl
}
