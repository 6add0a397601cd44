// Package netif chooses the underlay interface that carries the overlay,
// with flanneld's rules: --iface (names or addresses, in order), else
// --iface-regex (matched against addresses first, then names), else
// --iface-can-reach (the interface the kernel routes that address by), else
// the interface of the default route.
//
// The choice is pure given a snapshot of the host (Kernel); netif_linux.go
// reads that snapshot through internal/netlinkx.
package netif

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/weft-net/weft/internal/backend"
)

// Spec is what the operator asked for.
type Spec struct {
	// Ifaces are --iface values: interface names or IP addresses, tried in order.
	Ifaces []string
	// Regexes are --iface-regex values, tried in order.
	Regexes []string
	// CanReach is --iface-can-reach; invalid when not given.
	CanReach netip.Addr
	// PublicIP is --public-ip; invalid when not given.
	PublicIP netip.Addr
}

// Link is one interface of the host with its addresses.
type Link struct {
	Name  string
	Index int
	MTU   int
	// Addrs are the interface's addresses with their on-link prefix length
	// (10.0.0.5/24), in the kernel's order.
	Addrs []netip.Prefix
	// GSOIPv4MaxSize is the kernel's gso_ipv4_max_size; 0 if not reported.
	GSOIPv4MaxSize int
}

// Kernel is what the choice needs to know about the host.
type Kernel interface {
	// Links lists the host's interfaces.
	Links() ([]Link, error)
	// RouteTo returns the index of the interface the kernel would send a
	// packet for dst out of, and the source address it would use (invalid
	// if the route names none), as `ip route get dst` does.
	RouteTo(dst netip.Addr) (index int, src netip.Addr, err error)
	// DefaultRoute returns the index of the interface of the IPv4 default
	// route with the lowest metric.
	DefaultRoute() (index int, err error)
}

// Select chooses the external interface according to s.
func Select(k Kernel, s Spec) (backend.ExternalInterface, error) {
	if s.PublicIP.IsValid() && !s.PublicIP.Is4() {
		return backend.ExternalInterface{}, fmt.Errorf("--public-ip %s: not an IPv4 address", s.PublicIP)
	}
	links, err := k.Links()
	if err != nil {
		return backend.ExternalInterface{}, fmt.Errorf("list interfaces: %w", err)
	}
	l, addr, err := choose(k, links, s)
	if err != nil {
		return backend.ExternalInterface{}, err
	}
	return external(l, addr, s.PublicIP)
}

// choose picks the link and, when the rule that matched names one, the
// address on it to use.
func choose(k Kernel, links []Link, s Spec) (Link, netip.Addr, error) {
	switch {
	case len(s.Ifaces) > 0:
		var errs []string
		for _, want := range s.Ifaces {
			l, addr, err := byNameOrAddr(links, want)
			if err == nil {
				return l, addr, nil
			}
			errs = append(errs, err.Error())
		}
		return Link{}, netip.Addr{}, fmt.Errorf("no interface matches --iface %s (%s); interfaces: %s",
			strings.Join(s.Ifaces, ", "), strings.Join(errs, "; "), names(links))

	case len(s.Regexes) > 0:
		for _, expr := range s.Regexes {
			re, err := regexp.Compile(expr)
			if err != nil {
				return Link{}, netip.Addr{}, fmt.Errorf("--iface-regex %s: %w", expr, err)
			}
			if l, addr, ok := byRegex(links, re); ok {
				return l, addr, nil
			}
		}
		return Link{}, netip.Addr{}, fmt.Errorf("no interface matches --iface-regex %s; interfaces: %s",
			strings.Join(s.Regexes, ", "), names(links))

	case s.CanReach.IsValid():
		idx, src, err := k.RouteTo(s.CanReach)
		if err != nil {
			return Link{}, netip.Addr{}, fmt.Errorf("--iface-can-reach %s: %w", s.CanReach, err)
		}
		l, ok := byIndex(links, idx)
		if !ok {
			return Link{}, netip.Addr{}, fmt.Errorf("--iface-can-reach %s: route leaves by interface index %d, which is not listed", s.CanReach, idx)
		}
		if !src.Is4() || !hasAddr(l, src) {
			src = netip.Addr{}
		}
		return l, src, nil

	default:
		idx, err := k.DefaultRoute()
		if err != nil {
			return Link{}, netip.Addr{}, fmt.Errorf("no --iface, --iface-regex or --iface-can-reach given, and no default route to take the interface from: %w", err)
		}
		l, ok := byIndex(links, idx)
		if !ok {
			return Link{}, netip.Addr{}, fmt.Errorf("default route leaves by interface index %d, which is not listed", idx)
		}
		return l, netip.Addr{}, nil
	}
}

// byNameOrAddr matches one --iface value: an address selects the interface
// holding it (and that address), anything else is an interface name.
func byNameOrAddr(links []Link, want string) (Link, netip.Addr, error) {
	if a, err := netip.ParseAddr(want); err == nil {
		for _, l := range links {
			if hasAddr(l, a) {
				return l, a, nil
			}
		}
		return Link{}, netip.Addr{}, fmt.Errorf("no interface has address %s", a)
	}
	for _, l := range links {
		if l.Name == want {
			return l, netip.Addr{}, nil
		}
	}
	return Link{}, netip.Addr{}, fmt.Errorf("no interface named %s", want)
}

// byRegex matches addresses first, then names, as flanneld does, so that a
// regex such as ^10\.0\. picks the address, not just the interface.
func byRegex(links []Link, re *regexp.Regexp) (Link, netip.Addr, bool) {
	for _, l := range links {
		for _, p := range l.Addrs {
			if p.Addr().Is4() && re.MatchString(p.Addr().String()) {
				return l, p.Addr(), true
			}
		}
	}
	for _, l := range links {
		if re.MatchString(l.Name) {
			return l, netip.Addr{}, true
		}
	}
	return Link{}, netip.Addr{}, false
}

func byIndex(links []Link, idx int) (Link, bool) {
	i := slices.IndexFunc(links, func(l Link) bool { return l.Index == idx })
	if i < 0 {
		return Link{}, false
	}
	return links[i], true
}

func hasAddr(l Link, a netip.Addr) bool {
	return slices.ContainsFunc(l.Addrs, func(p netip.Prefix) bool { return p.Addr() == a })
}

// external builds the result: addr, when the matching rule did not name
// one, is the link's first usable IPv4 address.
func external(l Link, addr netip.Addr, public netip.Addr) (backend.ExternalInterface, error) {
	if !addr.IsValid() {
		var err error
		if addr, err = firstIPv4(l); err != nil {
			return backend.ExternalInterface{}, err
		}
	}
	if !addr.Is4() {
		return backend.ExternalInterface{}, fmt.Errorf("interface %s: address %s is not IPv4", l.Name, addr)
	}
	if l.MTU <= 0 {
		return backend.ExternalInterface{}, fmt.Errorf("interface %s: MTU %d is not usable", l.Name, l.MTU)
	}
	ext := backend.ExternalInterface{
		Name: l.Name, Index: l.Index, MTU: l.MTU, Addr: addr, PublicIP: addr,
		GSOIPv4MaxSize: l.GSOIPv4MaxSize,
	}
	if public.IsValid() {
		ext.PublicIP = public
	}
	for _, p := range l.Addrs {
		if p.Addr() == addr {
			ext.Subnet = p.Masked()
			break
		}
	}
	return ext, nil
}

// firstIPv4 is the first address another node could send to: not
// loopback, link-local, multicast or unspecified.
func firstIPv4(l Link) (netip.Addr, error) {
	for _, p := range l.Addrs {
		a := p.Addr()
		if a.Is4() && usable(a) {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("interface %s has no usable IPv4 address (has: %s)", l.Name, addrList(l))
}

func usable(a netip.Addr) bool {
	return !a.IsLoopback() && !a.IsLinkLocalUnicast() && !a.IsMulticast() && !a.IsUnspecified()
}

func names(links []Link) string {
	if len(links) == 0 {
		return "(none)"
	}
	n := make([]string, len(links))
	for i, l := range links {
		n[i] = l.Name
	}
	return strings.Join(n, ", ")
}

func addrList(l Link) string {
	if len(l.Addrs) == 0 {
		return "none"
	}
	s := make([]string, len(l.Addrs))
	for i, p := range l.Addrs {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// ErrNoDefaultRoute is returned by Kernel.DefaultRoute when there is none.
var ErrNoDefaultRoute = errors.New("no IPv4 default route")
