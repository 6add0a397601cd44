// Package netif chooses the underlay interface that carries the overlay,
// as flanneld v0.28.9 does (main.go:320-369, pkg/ipmatch/match.go):
//
//   - Given --iface, --iface-regex or --iface-can-reach: each --iface in
//     order (an address selects the interface holding it, anything else
//     is a name), then each --iface-regex in order (matched against
//     addresses first, then names), then --iface-can-reach (the interface
//     the kernel routes that address by). The first candidate that yields
//     a usable interface wins; each one that does not is logged and the
//     next is tried.
//   - Given none of them: the interface holding --public-ip (or, without
//     it, --public-ipv6), which must therefore be a local address, else
//     the interface of the default route.
//
// Which address families the interface must serve (Stack) comes from the
// network config's EnableIPv4 and EnableIPv6.
//
// The choice is pure given a snapshot of the host (Kernel); netif_linux.go
// reads that snapshot through internal/netlinkx.
package netif

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"slices"
	"strings"
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
	PublicIP   netip.Addr
	PublicIPv6 netip.Addr // --public-ipv6
}

// Stack is the address families the underlay must serve.
type Stack int

// Stacks.
const (
	IPv4      Stack = 1
	IPv6      Stack = 2
	DualStack Stack = IPv4 | IPv6
)

// StackOf is the stack of a network config's EnableIPv4 and EnableIPv6.
func StackOf(enableIPv4, enableIPv6 bool) (Stack, error) {
	var s Stack
	if enableIPv4 {
		s |= IPv4
	}
	if enableIPv6 {
		s |= IPv6
	}
	if s == 0 {
		return 0, errors.New("neither IPv4 nor IPv6 is enabled")
	}
	return s, nil
}

func (s Stack) v4() bool { return s&IPv4 != 0 }
func (s Stack) v6() bool { return s&IPv6 != 0 }

func (s Stack) String() string {
	switch s {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	case DualStack:
		return "dual stack"
	}
	return fmt.Sprintf("Stack(%d)", int(s))
}

// External is the underlay interface this node reaches the others by
// (flannel's backend.ExternalInterface).
type External struct {
	Name  string
	Index int
	MTU   int
	// Addr is the interface's IPv4 address, the tunnel source (flannel's
	// IfaceAddr); invalid when the stack has no IPv4.
	Addr netip.Addr
	// Addr6 is the interface's IPv6 address (IfaceV6Addr); invalid when
	// the stack has no IPv6.
	Addr6 netip.Addr
	// PublicIP is what other nodes send to over IPv4 (ExtAddr):
	// --public-ip, else Addr.
	PublicIP netip.Addr
	// PublicIPv6 is what other nodes send to over IPv6 (ExtV6Addr):
	// --public-ipv6, else Addr6.
	PublicIPv6 netip.Addr
	// Subnet and Subnet6 are the on-link prefixes of Addr and Addr6 (for
	// DirectRouting and host-gw adjacency checks); invalid if unknown.
	Subnet  netip.Prefix
	Subnet6 netip.Prefix
	// GSOIPv4MaxSize is the interface's gso_ipv4_max_size: above 65536 it
	// carries BIG TCP. 0 when the kernel does not report it.
	GSOIPv4MaxSize int
}

// Addr is one address of an interface, with the kernel's flags that rank
// it.
type Addr struct {
	// Prefix is the address with its on-link prefix length (10.0.0.5/24).
	Prefix netip.Prefix
	// Permanent: configured with infinite lifetime, not autoconfigured
	// (IFA_F_PERMANENT; `ip addr` shows the others as dynamic).
	Permanent bool
	// Temporary: an IPv6 privacy address; for IPv4 the same kernel bit
	// marks a secondary address (IFA_F_TEMPORARY = IFA_F_SECONDARY).
	Temporary bool
	// Deprecated: its preferred lifetime is over (IFA_F_DEPRECATED).
	Deprecated bool
}

// Link is one interface of the host with its addresses.
type Link struct {
	Name  string
	Index int
	MTU   int
	// Addrs are the interface's addresses of both families, in the
	// kernel's order.
	Addrs []Addr
	// GSOIPv4MaxSize is the kernel's gso_ipv4_max_size; 0 if not reported.
	GSOIPv4MaxSize int
}

// Kernel is what the choice needs to know about the host.
type Kernel interface {
	// Links lists the host's interfaces in the kernel's order (by index).
	Links() ([]Link, error)
	// RouteGet returns the index of the interface the kernel would send a
	// packet for dst out of and the source address it would give it
	// (invalid if none), as `ip route get dst` does.
	RouteGet(dst netip.Addr) (index int, src netip.Addr, err error)
	// DefaultRoute returns the interface index of the main table's first
	// IPv4 (ipv6: IPv6) default route, 0 if that route names none, or
	// ErrNoDefaultRoute.
	DefaultRoute(ipv6 bool) (index int, err error)
}

// ErrNoDefaultRoute is returned by Kernel.DefaultRoute when there is none.
var ErrNoDefaultRoute = errors.New("no default route")

// Select chooses the external interface according to s for the address
// families of st, logging each candidate that does not fit to log (nil
// discards).
func Select(k Kernel, s Spec, st Stack, log *slog.Logger) (External, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if st != IPv4 && st != IPv6 && st != DualStack {
		return External{}, fmt.Errorf("choose an interface: %v: no address family to serve", st)
	}
	if s.PublicIP.IsValid() && !s.PublicIP.Is4() {
		return External{}, fmt.Errorf("--public-ip %s: not an IPv4 address", s.PublicIP)
	}
	if s.PublicIPv6.IsValid() && (!s.PublicIPv6.Is6() || s.PublicIPv6.Is4In6()) {
		return External{}, fmt.Errorf("--public-ipv6 %s: not an IPv6 address", s.PublicIPv6)
	}
	links, err := k.Links()
	if err != nil {
		return External{}, fmt.Errorf("list interfaces: %w", err)
	}
	c := &chooser{k: k, links: links, s: s, st: st}

	if len(s.Ifaces) == 0 && len(s.Regexes) == 0 && !s.CanReach.IsValid() {
		// Flannel's quirk: a public address given without any interface
		// rule selects the interface holding it, so it must be local.
		for _, pub := range []struct {
			flag string
			a    netip.Addr
		}{{"--public-ip", s.PublicIP}, {"--public-ipv6", s.PublicIPv6}} {
			if !pub.a.IsValid() {
				continue
			}
			ext, err := c.finish(c.byAddrOrName(pub.a.String()))
			if err != nil {
				return External{}, fmt.Errorf("no --iface, --iface-regex or --iface-can-reach given, so the interface holding %s %s is used: %w (%s)",
					pub.flag, pub.a, err, c.inventory())
			}
			log.Debug("interface chosen", "by", pub.flag+" "+pub.a.String(), "iface", ext.Name)
			return ext, nil
		}
		ext, err := c.finish(c.byDefaultRoute())
		if err != nil {
			return External{}, fmt.Errorf("no --iface, --iface-regex or --iface-can-reach given, so the default route's interface is used: %w", err)
		}
		log.Debug("interface chosen", "by", "default route", "iface", ext.Name)
		return ext, nil
	}

	var tried []string
	try := func(what string, p pick, err error) (External, bool) {
		ext, err := c.finish(p, err)
		if err != nil {
			log.Info("interface candidate does not fit", "candidate", what, "stack", st, "err", err)
			tried = append(tried, what+": "+err.Error())
			return External{}, false
		}
		log.Debug("interface chosen", "by", what, "iface", ext.Name)
		return ext, true
	}
	for _, want := range s.Ifaces {
		p, err := c.byAddrOrName(want)
		if ext, ok := try("--iface "+want, p, err); ok {
			return ext, nil
		}
	}
	for _, expr := range s.Regexes {
		p, err := c.byRegex(expr)
		if ext, ok := try("--iface-regex "+expr, p, err); ok {
			return ext, nil
		}
	}
	if s.CanReach.IsValid() {
		p, err := c.byCanReach(s.CanReach)
		if ext, ok := try("--iface-can-reach "+s.CanReach.String(), p, err); ok {
			return ext, nil
		}
	}
	return External{}, fmt.Errorf("no interface fits for %v: %s; interfaces: %s", st, strings.Join(tried, "; "), c.inventory())
}

// chooser holds one choice's inputs.
type chooser struct {
	k     Kernel
	links []Link
	s     Spec
	st    Stack
}

// pick is a candidate: the link, and the addresses the rule that matched
// named (invalid ones are filled in by finish).
type pick struct {
	link         Link
	addr4, addr6 netip.Addr
}

// byAddrOrName matches one --iface value (match.go:71-118): an address
// selects the interface holding it, anything else is an interface name.
func (c *chooser) byAddrOrName(want string) (pick, error) {
	a, err := netip.ParseAddr(want)
	if err != nil || a.Zone() != "" { // flannel's net.ParseIP takes no zone either
		l, ok := c.byName(want)
		if !ok {
			return pick{}, fmt.Errorf("no interface named %s", want)
		}
		return pick{link: l}, nil
	}
	a = a.Unmap()
	switch c.st {
	case IPv4:
		if !a.Is4() {
			return pick{}, fmt.Errorf("%s is an IPv6 address and only IPv4 is enabled", a)
		}
		l, err := c.holder(a)
		return pick{link: l, addr4: a}, err
	case IPv6:
		if !a.Is6() {
			return pick{}, fmt.Errorf("%s is an IPv4 address and only IPv6 is enabled", a)
		}
		l, err := c.holder(a)
		return pick{link: l, addr6: a}, err
	}
	// Dual stack.
	var p pick
	if a.Is4() {
		l, err := c.holder(a)
		if err != nil {
			return pick{}, err
		}
		p = pick{link: l, addr4: a}
	}
	if pub := c.s.PublicIPv6; pub.IsValid() {
		// Flannel: --public-ipv6 must then be local too. It gives the IPv6
		// address and must be on the same interface; an IPv6 --iface
		// address gives way to it entirely.
		l6, err := c.holder(pub)
		if err != nil {
			return pick{}, fmt.Errorf("--public-ipv6: %w", err)
		}
		if !a.Is4() {
			p = pick{link: l6}
		} else if l6.Index != p.link.Index {
			return pick{}, fmt.Errorf("--public-ipv6 %s is on %s, %s on %s: dual stack needs both on one interface", pub, l6.Name, a, p.link.Name)
		}
		p.addr6 = pub
		return p, nil
	}
	if !a.Is4() {
		// Flannel dereferences a nil interface here; take the holder.
		l, err := c.holder(a)
		if err != nil {
			return pick{}, err
		}
		p = pick{link: l, addr6: a}
	}
	return p, nil
}

// byRegex matches one --iface-regex (match.go:119-205): the usable
// addresses of each interface in order, then the names. In dual stack an
// interface matches by address only with both an IPv4 and an IPv6 address
// matching.
func (c *chooser) byRegex(expr string) (pick, error) {
	re, err := regexp.Compile(expr)
	if err != nil {
		return pick{}, fmt.Errorf("not a regular expression: %w", err)
	}
	match := func(as []netip.Addr) netip.Addr {
		i := slices.IndexFunc(as, func(a netip.Addr) bool { return re.MatchString(a.String()) })
		if i < 0 {
			return netip.Addr{}
		}
		return as[i]
	}
	v4only := map[int]netip.Addr{} // dual stack: IPv4 matched, IPv6 did not
	for _, l := range c.links {
		switch c.st {
		case IPv4:
			if m := match(usable(l, false)); m.IsValid() {
				return pick{link: l, addr4: m}, nil
			}
		case IPv6:
			if m := match(usable(l, true)); m.IsValid() {
				return pick{link: l, addr6: m}, nil
			}
		case DualStack:
			a4, a6 := usable(l, false), usable(l, true)
			if len(a4) == 0 || len(a6) == 0 {
				continue
			}
			m4 := match(a4)
			if !m4.IsValid() {
				continue
			}
			if m6 := match(a6); m6.IsValid() {
				return pick{link: l, addr4: m4, addr6: m6}, nil
			}
			v4only[l.Index] = m4
		}
	}
	for _, l := range c.links {
		if re.MatchString(l.Name) {
			// Flannel keeps the last IPv4 match here even when it is on
			// another interface; weft keeps it only if it is on this one.
			return pick{link: l, addr4: v4only[l.Index]}, nil
		}
	}
	return pick{}, errors.New("matches no usable address and no interface name")
}

// byCanReach takes the interface, and the source address, of the kernel's
// route to dst (iface.go:207-223). The source address is kept for the
// family it belongs to.
func (c *chooser) byCanReach(dst netip.Addr) (pick, error) {
	idx, src, err := c.k.RouteGet(dst)
	if err != nil {
		return pick{}, err
	}
	l, ok := c.byIndex(idx)
	if !ok {
		return pick{}, fmt.Errorf("the route to %s leaves by interface #%d, which is not listed", dst, idx)
	}
	p := pick{link: l}
	switch {
	case src.Is4() && c.st.v4():
		p.addr4 = src
	case src.Is6() && c.st.v6():
		p.addr6 = src
	}
	return p, nil
}

// byDefaultRoute takes the interface of the default route (match.go:
// 210-234); in dual stack the IPv4 and IPv6 ones must be the same.
func (c *chooser) byDefaultRoute() (pick, error) {
	one := func(v6 bool) (Link, error) {
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		idx, err := c.k.DefaultRoute(v6)
		if errors.Is(err, ErrNoDefaultRoute) {
			return Link{}, fmt.Errorf("no %s default route", fam)
		}
		if err != nil {
			return Link{}, fmt.Errorf("%s default route: %w", fam, err)
		}
		if idx <= 0 {
			return Link{}, fmt.Errorf("the %s default route names no interface (multipath or blackhole)", fam)
		}
		l, ok := c.byIndex(idx)
		if !ok {
			return Link{}, fmt.Errorf("the %s default route leaves by interface #%d, which is not listed", fam, idx)
		}
		return l, nil
	}
	var l4, l6 Link
	var err error
	if c.st.v4() {
		if l4, err = one(false); err != nil {
			return pick{}, err
		}
	}
	if c.st.v6() {
		if l6, err = one(true); err != nil {
			return pick{}, err
		}
	}
	switch c.st {
	case IPv4:
		return pick{link: l4}, nil
	case IPv6:
		return pick{link: l6}, nil
	}
	if l4.Index != l6.Index {
		return pick{}, fmt.Errorf("the IPv6 default route leaves by %s, the IPv4 one by %s: dual stack needs one interface for both", l6.Name, l4.Name)
	}
	return pick{link: l4}, nil
}

// finish fills in the addresses the rule did not name with the link's
// first usable ones and builds the result (match.go:237-315).
func (c *chooser) finish(p pick, err error) (External, error) {
	if err != nil {
		return External{}, err
	}
	l := p.link
	if c.st.v4() && !p.addr4.IsValid() {
		u := usable(l, false)
		if len(u) == 0 {
			return External{}, fmt.Errorf("interface %s has no usable IPv4 address (has: %s)", l.Name, addrList(l))
		}
		p.addr4 = u[0]
	}
	if c.st.v6() && !p.addr6.IsValid() {
		u := usable(l, true)
		if len(u) == 0 {
			return External{}, fmt.Errorf("interface %s has no usable IPv6 address (has: %s)", l.Name, addrList(l))
		}
		p.addr6 = u[0]
	}
	if l.MTU <= 0 {
		return External{}, fmt.Errorf("interface %s: MTU %d is not usable", l.Name, l.MTU)
	}
	ext := External{
		Name: l.Name, Index: l.Index, MTU: l.MTU,
		Addr: p.addr4, Addr6: p.addr6,
		PublicIP: c.s.PublicIP, PublicIPv6: c.s.PublicIPv6,
		Subnet: onLink(l, p.addr4), Subnet6: onLink(l, p.addr6),
		GSOIPv4MaxSize: l.GSOIPv4MaxSize,
	}
	if !ext.PublicIP.IsValid() {
		ext.PublicIP = ext.Addr
	}
	if !ext.PublicIPv6.IsValid() {
		ext.PublicIPv6 = ext.Addr6
	}
	return ext, nil
}

// usable lists l's addresses of one family that flannel would use, best
// first (iface.go:52-104, 335-359): global or link-local unicast, not
// deprecated; global before link-local, permanent before dynamic,
// non-temporary before temporary, else in the kernel's order.
func usable(l Link, v6 bool) []netip.Addr {
	var as []Addr
	for _, a := range l.Addrs {
		ip := a.Prefix.Addr()
		if ip.Is6() != v6 || a.Deprecated || !(ip.IsGlobalUnicast() || ip.IsLinkLocalUnicast()) {
			continue
		}
		as = append(as, a)
	}
	slices.SortStableFunc(as, func(a, b Addr) int {
		if r := rank(!a.Prefix.Addr().IsGlobalUnicast(), !b.Prefix.Addr().IsGlobalUnicast()); r != 0 {
			return r
		}
		if r := rank(!a.Permanent, !b.Permanent); r != 0 {
			return r
		}
		return rank(a.Temporary, b.Temporary)
	})
	out := make([]netip.Addr, len(as))
	for i, a := range as {
		out[i] = a.Prefix.Addr()
	}
	return out
}

// rank orders false before true.
func rank(a, b bool) int {
	switch {
	case !a && b:
		return -1
	case a && !b:
		return 1
	}
	return 0
}

// holder is the first interface that has address a, whatever its flags.
func (c *chooser) holder(a netip.Addr) (Link, error) {
	for _, l := range c.links {
		if slices.ContainsFunc(l.Addrs, func(x Addr) bool { return x.Prefix.Addr() == a }) {
			return l, nil
		}
	}
	return Link{}, fmt.Errorf("no interface has address %s", a)
}

func (c *chooser) byName(name string) (Link, bool) {
	i := slices.IndexFunc(c.links, func(l Link) bool { return l.Name == name })
	if i < 0 {
		return Link{}, false
	}
	return c.links[i], true
}

func (c *chooser) byIndex(idx int) (Link, bool) {
	i := slices.IndexFunc(c.links, func(l Link) bool { return l.Index == idx })
	if i < 0 {
		return Link{}, false
	}
	return c.links[i], true
}

// onLink is the prefix a is configured with on l; invalid if a is not
// one of l's addresses.
func onLink(l Link, a netip.Addr) netip.Prefix {
	if !a.IsValid() {
		return netip.Prefix{}
	}
	for _, x := range l.Addrs {
		if x.Prefix.Addr() == a {
			return x.Prefix.Masked()
		}
	}
	return netip.Prefix{}
}

// inventory lists every interface with its addresses, for errors.
func (c *chooser) inventory() string {
	if len(c.links) == 0 {
		return "(none)"
	}
	s := make([]string, len(c.links))
	for i, l := range c.links {
		s[i] = l.Name + " [" + strings.Join(prefixes(l), " ") + "]"
	}
	return strings.Join(s, ", ")
}

func addrList(l Link) string {
	if len(l.Addrs) == 0 {
		return "none"
	}
	return strings.Join(prefixes(l), ", ")
}

func prefixes(l Link) []string {
	s := make([]string, len(l.Addrs))
	for i, a := range l.Addrs {
		s[i] = a.Prefix.String()
	}
	return s
}
