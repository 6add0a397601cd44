package netif

import (
	"fmt"
	"net/netip"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/netlinkx"
)

// Host reads the interfaces and routes of the namespace h talks to.
type Host struct {
	H *netlinkx.Handle
}

// SelectOn chooses the external interface of h's namespace.
func SelectOn(h *netlinkx.Handle, s Spec) (backend.ExternalInterface, error) {
	return Select(Host{H: h}, s)
}

// Links implements Kernel.
func (k Host) Links() ([]Link, error) {
	ls, err := k.H.LinkList()
	if err != nil {
		return nil, err
	}
	out := make([]Link, 0, len(ls))
	for _, l := range ls {
		a := l.Attrs()
		addrs, err := k.H.AddrList(l, netlinkx.FamilyAll)
		if err != nil {
			if netlinkx.IsNotFound(err) {
				continue // removed while we listed
			}
			return nil, fmt.Errorf("addresses of %s: %w", a.Name, err)
		}
		out = append(out, Link{
			Name: a.Name, Index: a.Index, MTU: a.MTU, Addrs: addrs,
			GSOIPv4MaxSize: int(a.GSOIPv4MaxSize),
		})
	}
	return out, nil
}

// RouteTo implements Kernel by longest-prefix match over the main table's
// IPv4 routes (lowest metric among equals). It does not follow policy
// routing rules; the source address is left to the interface's first.
func (k Host) RouteTo(dst netip.Addr) (int, netip.Addr, error) {
	if !dst.Is4() {
		return 0, netip.Addr{}, fmt.Errorf("%s is not an IPv4 address", dst)
	}
	routes, err := k.H.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4})
	if err != nil {
		return 0, netip.Addr{}, err
	}
	r, ok := bestRoute(routes, dst)
	if !ok {
		return 0, netip.Addr{}, fmt.Errorf("no route to %s", dst)
	}
	return r.LinkIndex, netip.Addr{}, nil
}

// DefaultRoute implements Kernel.
func (k Host) DefaultRoute() (int, error) {
	routes, err := k.H.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4})
	if err != nil {
		return 0, err
	}
	var best *netlinkx.Route
	for i, r := range routes {
		if r.Dst.Bits() == 0 && r.LinkIndex > 0 && (best == nil || r.Priority < best.Priority) {
			best = &routes[i]
		}
	}
	if best == nil {
		return 0, ErrNoDefaultRoute
	}
	return best.LinkIndex, nil
}

// bestRoute is the longest-prefix match for dst, lowest metric first.
func bestRoute(routes []netlinkx.Route, dst netip.Addr) (netlinkx.Route, bool) {
	var best netlinkx.Route
	found := false
	for _, r := range routes {
		if r.LinkIndex <= 0 || !r.Dst.Contains(dst) {
			continue
		}
		if !found || r.Dst.Bits() > best.Dst.Bits() || (r.Dst.Bits() == best.Dst.Bits() && r.Priority < best.Priority) {
			best, found = r, true
		}
	}
	return best, found
}
