package netif

import (
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/weft-net/weft/internal/netlinkx"
)

// Host reads the interfaces and routes of the namespace h talks to.
type Host struct {
	H *netlinkx.Handle
}

// SelectOn chooses the external interface of h's namespace (see Select).
func SelectOn(h *netlinkx.Handle, s Spec, st Stack, log *slog.Logger) (External, error) {
	return Select(Host{H: h}, s, st, log)
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
		addrs, err := k.H.Addrs(l, netlinkx.FamilyAll)
		if err != nil {
			if netlinkx.IsNotFound(err) {
				continue // removed while we listed
			}
			return nil, fmt.Errorf("addresses of %s: %w", a.Name, err)
		}
		link := Link{Name: a.Name, Index: a.Index, MTU: a.MTU, GSOIPv4MaxSize: int(a.GSOIPv4MaxSize)}
		for _, x := range addrs {
			link.Addrs = append(link.Addrs, Addr{
				Prefix:     x.Prefix,
				Permanent:  x.Flags&netlinkx.AddrFPermanent != 0,
				Temporary:  x.Flags&netlinkx.AddrFTemporary != 0,
				Deprecated: x.Flags&netlinkx.AddrFDeprecated != 0,
			})
		}
		out = append(out, link)
	}
	return out, nil
}

// RouteGet implements Kernel with the kernel's own route lookup, so policy
// routing and the kernel's source address selection apply.
func (k Host) RouteGet(dst netip.Addr) (int, netip.Addr, error) {
	r, err := k.H.RouteGet(dst)
	if err != nil {
		return 0, netip.Addr{}, err
	}
	return r.LinkIndex, r.Src, nil
}

// DefaultRoute implements Kernel.
func (k Host) DefaultRoute(ipv6 bool) (int, error) {
	f := netlinkx.FamilyV4
	if ipv6 {
		f = netlinkx.FamilyV6
	}
	idx, ok, err := k.H.DefaultRouteLink(f)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, ErrNoDefaultRoute
	}
	return idx, nil
}
