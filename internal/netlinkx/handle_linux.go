package netlinkx

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Link types callers build and inspect. They are the library's own, so that
// a caller can create a VXLAN or veth without importing it.
type (
	Link      = netlink.Link
	LinkAttrs = netlink.LinkAttrs
	Vxlan     = netlink.Vxlan
	Veth      = netlink.Veth
	Bridge    = netlink.Bridge
	// NsFd names a namespace by an open file descriptor (Veth.PeerNamespace).
	NsFd = netlink.NsFd
	// Wireguard is a kernel WireGuard device (`ip link add D type wireguard`).
	Wireguard = netlink.Wireguard
)

// NewLinkAttrs returns LinkAttrs with the library's defaults (TxQLen -1 lets
// the kernel choose).
func NewLinkAttrs() LinkAttrs { return netlink.NewLinkAttrs() }

// Handle talks to one network namespace. Its sockets live in that namespace,
// so no thread has to switch into it. Safe for concurrent use: dumps go
// through a socket of their own, since the library holds a socket for a
// whole dump, and reading 15,000 entries on one goroutine must not hold
// up a write on another. Route, neighbour and FDB dumps, which this
// package reads and decodes itself (dump_linux.go), run on the batch
// socket instead: they and a Batch's flush wait for each other, while
// single writes never wait for either.
type Handle struct {
	nh     *netlink.Handle // requests
	dh     *netlink.Handle // dumps
	dumps  atomic.Uint64
	nsPath string // "" for the process's own namespace

	bmu sync.Mutex // one batch write and its answers at a time
	bs  *batchSocket
}

// New returns a handle on the calling process's network namespace.
func New() (*Handle, error) {
	return open(netns.None(), "")
}

// open makes a Handle's sockets in ns (netns.None() for the calling
// thread's).
func open(ns netns.NsHandle, nsPath string) (*Handle, error) {
	where := ""
	if nsPath != "" {
		where = " in " + nsPath
	}
	nh, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket%s: %w", where, err)
	}
	dh, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		nh.Close()
		return nil, fmt.Errorf("netlink socket%s: %w", where, err)
	}
	bs, err := openBatchSocket(ns)
	if err != nil {
		nh.Close()
		dh.Close()
		return nil, fmt.Errorf("%w%s", err, where)
	}
	return &Handle{nh: nh, dh: dh, bs: bs, nsPath: nsPath}, nil
}

// NewAt returns a handle on the namespace bind-mounted (or /proc/PID/ns/net)
// at nsPath.
func NewAt(nsPath string) (*Handle, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	// The sockets keep the namespace alive; the descriptor is not needed.
	defer ns.Close()
	return open(ns, nsPath)
}

// Close releases the handle's sockets.
func (h *Handle) Close() {
	h.nh.Close()
	h.dh.Close()
	h.bs.s.Close()
}

// SetSysctl is `sysctl -w` of a /proc/sys key ("net/ipv6/conf/flannel-v6.1/accept_ra")
// in the handle's namespace.
func (h *Handle) SetSysctl(key, value string) error {
	return h.inNamespace("sysctl "+key, func() error {
		if err := os.WriteFile(sysctlPath(key), []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
		}
		return nil
	})
}

// Sysctl is `sysctl -n` of a /proc/sys key in the handle's namespace.
func (h *Handle) Sysctl(key string) (string, error) {
	var v string
	err := h.inNamespace("sysctl "+key, func() error {
		b, err := os.ReadFile(sysctlPath(key))
		if err != nil {
			return fmt.Errorf("sysctl %s: %w", key, err)
		}
		v = strings.TrimSpace(string(b))
		return nil
	})
	return v, err
}

func sysctlPath(key string) string { return filepath.Join("/proc/sys", filepath.Clean("/"+key)) }

// inNamespace runs f where /proc/sys/net shows the handle's namespace:
// /proc/sys/net shows the namespace of the thread that opens it, so for
// another namespace f runs on a locked thread switched into it.
func (h *Handle) inNamespace(what string, f func() error) error {
	if h.nsPath == "" {
		return f()
	}
	target, err := netns.GetFromPath(h.nsPath)
	if err != nil {
		return fmt.Errorf("%s: open netns %s: %w", what, h.nsPath, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		// The thread stays locked if it cannot be switched back, so the
		// runtime discards it instead of reusing it in h's namespace.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("%s: own namespace: %w", what, err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("%s: enter namespace: %w", what, err)
			return
		}
		err = f()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Dumps counts the dump requests made through h (retries included). It lets
// callers and tests see that a fast path stayed off the full-table dumps.
func (h *Handle) Dumps() uint64 { return h.dumps.Load() }

// dumpAttempts bounds retries of a dump the kernel keeps interrupting
// (NLM_F_DUMP_INTR: the table changed while it was being read).
const dumpAttempts = 5

// dump is retry for a dump request, counted in Dumps.
func dump[T any](h *Handle, what string, f func() (T, error)) (T, error) {
	return retry(what, func() (T, error) {
		h.dumps.Add(1)
		return f()
	})
}

// retry runs f until it returns without netlink.ErrDumpInterrupted, whose
// partial results must not be used, at most dumpAttempts times.
func retry[T any](what string, f func() (T, error)) (T, error) {
	var zero T
	var err error
	for range dumpAttempts {
		var v T
		v, err = f()
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return zero, fmt.Errorf("%s: %w", what, err)
		}
	}
	return zero, fmt.Errorf("%s: still interrupted after %d attempts: %w", what, dumpAttempts, err)
}

// IsNotFound reports whether err says the link, route, neighbour or address
// does not exist.
func IsNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) ||
		errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) ||
		errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EADDRNOTAVAIL)
}

// IsExist reports whether err says what was to be added exists already
// (EEXIST).
func IsExist(err error) bool { return errors.Is(err, unix.EEXIST) }

// ignoreNotFound makes deletes idempotent: removing what is gone is success.
func ignoreNotFound(err error) error {
	if err != nil && IsNotFound(err) {
		return nil
	}
	return err
}

// LinkByName is `ip link show NAME`. A missing link gives an error for which
// IsNotFound is true.
func (h *Handle) LinkByName(name string) (Link, error) {
	// Older kernels answer a by-name lookup with a dump, hence the retry.
	return retry("link "+name, func() (Link, error) { return h.nh.LinkByName(name) })
}

// LinkByIndex is `ip link show` for one ifindex.
func (h *Handle) LinkByIndex(index int) (Link, error) {
	l, err := h.nh.LinkByIndex(index)
	if err != nil {
		return nil, fmt.Errorf("link #%d: %w", index, err)
	}
	return l, nil
}

// LinkList is `ip link show`.
func (h *Handle) LinkList() ([]Link, error) {
	return dump(h, "list links", h.dh.LinkList)
}

// LinkAdd is `ip link add …` for the given link; it fills in the new
// link's index.
func (h *Handle) LinkAdd(l Link) error {
	if err := h.nh.LinkAdd(l); err != nil {
		return fmt.Errorf("add link %s (%s): %w", l.Attrs().Name, l.Type(), err)
	}
	return nil
}

// LinkDel is `ip link del NAME`. A link already gone is not an error.
func (h *Handle) LinkDel(l Link) error {
	if err := ignoreNotFound(h.nh.LinkDel(l)); err != nil {
		return fmt.Errorf("delete link %s: %w", l.Attrs().Name, err)
	}
	return nil
}

// LinkSetUp is `ip link set NAME up`.
func (h *Handle) LinkSetUp(l Link) error {
	if err := h.nh.LinkSetUp(l); err != nil {
		return fmt.Errorf("set link %s up: %w", l.Attrs().Name, err)
	}
	return nil
}

// LinkSetHairpin is `bridge link set dev NAME hairpin on|off` on a bridge
// port: whether the bridge sends a frame back out of the port it came in
// by (a pod reaching itself through a service address).
func (h *Handle) LinkSetHairpin(l Link, on bool) error {
	if err := h.nh.LinkSetHairpin(l, on); err != nil {
		return fmt.Errorf("set hairpin %v on %s: %w", on, l.Attrs().Name, err)
	}
	return nil
}

// OperUp reports whether l is operationally up (carrier, and for a bridge
// port, forwarding), as `ip link` shows state UP.
func OperUp(l Link) bool { return l.Attrs().OperState == netlink.OperUp }

// LinkSetMTU is `ip link set NAME mtu MTU`.
func (h *Handle) LinkSetMTU(l Link, mtu int) error {
	if err := h.nh.LinkSetMTU(l, mtu); err != nil {
		return fmt.Errorf("set link %s mtu %d: %w", l.Attrs().Name, mtu, err)
	}
	return nil
}

// LinkSetIPv4GSOMaxSize is `ip link set NAME gso_ipv4_max_size SIZE
// gro_ipv4_max_size SIZE`: the largest IPv4 packet the link's senders may
// build for segmentation offload and GRO may build on receive. Above 65536
// this is BIG TCP (Linux 6.3 or later).
func (h *Handle) LinkSetIPv4GSOMaxSize(l Link, size int) error {
	if err := h.nh.LinkSetGSOIPv4MaxSize(l, size); err != nil {
		return fmt.Errorf("set link %s gso_ipv4_max_size %d: %w", l.Attrs().Name, size, err)
	}
	if err := h.nh.LinkSetGROIPv4MaxSize(l, size); err != nil {
		return fmt.Errorf("set link %s gro_ipv4_max_size %d: %w", l.Attrs().Name, size, err)
	}
	return nil
}

// LinkSetHardwareAddr is `ip link set NAME address MAC`.
func (h *Handle) LinkSetHardwareAddr(l Link, mac MAC) error {
	if err := h.nh.LinkSetHardwareAddr(l, mac.HardwareAddr()); err != nil {
		return fmt.Errorf("set link %s address %s: %w", l.Attrs().Name, mac, err)
	}
	return nil
}

// LinkSetNsFd is `ip link set NAME netns NS` with NS an open descriptor.
func (h *Handle) LinkSetNsFd(l Link, fd int) error {
	if err := h.nh.LinkSetNsFd(l, fd); err != nil {
		return fmt.Errorf("move link %s to netns: %w", l.Attrs().Name, err)
	}
	return nil
}

// LinkSetMaster is `ip link set NAME master MASTER`.
func (h *Handle) LinkSetMaster(l, master Link) error {
	if err := h.nh.LinkSetMaster(l, master); err != nil {
		return fmt.Errorf("set link %s master %s: %w", l.Attrs().Name, master.Attrs().Name, err)
	}
	return nil
}

func toIPNet(p netip.Prefix) *net.IPNet { n := IPNetOf(p); return &n }

func fromIPNet(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	return PrefixOf(*n)
}

func fromIP(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}

// AddrReplace is `ip addr replace P dev NAME`: P's address with P's prefix
// length (10.244.1.0/32).
func (h *Handle) AddrReplace(l Link, p netip.Prefix) error {
	if err := h.nh.AddrReplace(l, &netlink.Addr{IPNet: toIPNet(p)}); err != nil {
		return fmt.Errorf("replace address %s on %s: %w", p, l.Attrs().Name, err)
	}
	return nil
}

// AddrAdd is `ip addr add P dev NAME`; an address already there is an
// error (IsExist).
func (h *Handle) AddrAdd(l Link, p netip.Prefix) error {
	if err := h.nh.AddrAdd(l, &netlink.Addr{IPNet: toIPNet(p)}); err != nil {
		return fmt.Errorf("add address %s to %s: %w", p, l.Attrs().Name, err)
	}
	return nil
}

// AddrDel is `ip addr del P dev NAME`. An address already gone is not an error.
func (h *Handle) AddrDel(l Link, p netip.Prefix) error {
	if err := ignoreNotFound(h.nh.AddrDel(l, &netlink.Addr{IPNet: toIPNet(p)})); err != nil {
		return fmt.Errorf("delete address %s from %s: %w", p, l.Attrs().Name, err)
	}
	return nil
}

// AddrList is `ip addr show dev NAME` for one family (FamilyAll for both).
func (h *Handle) AddrList(l Link, f Family) ([]netip.Prefix, error) {
	addrs, err := dump(h, "list addresses of "+l.Attrs().Name, func() ([]netlink.Addr, error) {
		return h.dh.AddrList(l, int(f))
	})
	if err != nil {
		return nil, err
	}
	out := make([]netip.Prefix, 0, len(addrs))
	for _, a := range addrs {
		if p, ok := fromIPNet(a.IPNet); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// Addrs is AddrList with each address's flags (permanent, temporary,
// deprecated), in the kernel's order.
func (h *Handle) Addrs(l Link, f Family) ([]Addr, error) {
	addrs, err := dump(h, "list addresses of "+l.Attrs().Name, func() ([]netlink.Addr, error) {
		return h.dh.AddrList(l, int(f))
	})
	if err != nil {
		return nil, err
	}
	out := make([]Addr, 0, len(addrs))
	for _, a := range addrs {
		if p, ok := fromIPNet(a.IPNet); ok {
			out = append(out, Addr{Prefix: p, Flags: a.Flags})
		}
	}
	return out, nil
}

func toNLRoute(r Route) *netlink.Route {
	nr := &netlink.Route{
		Dst:       toIPNet(r.Dst),
		LinkIndex: r.LinkIndex,
		Priority:  r.Priority,
		Table:     r.Table,
	}
	if r.Gw.IsValid() {
		nr.Gw = r.Gw.AsSlice()
	} else {
		// As `ip route add P dev D` does: a route without gateway is on-link.
		nr.Scope = netlink.SCOPE_LINK
	}
	if r.OnLink {
		nr.Flags |= int(netlink.FLAG_ONLINK)
	}
	return nr
}

// RouteAddECMP adds r as the CNI plugins' ipam.ConfigureIface does
// (netlink's RouteAddEcmp): create, never replace, an exact duplicate an
// error (IsExist), a second IPv6 route to the same destination a next
// hop of it; without a gateway in universe scope, not link.
func (h *Handle) RouteAddECMP(r Route) error {
	nr := toNLRoute(r)
	if !r.Gw.IsValid() {
		nr.Scope = netlink.SCOPE_UNIVERSE
	}
	if err := h.nh.RouteAddEcmp(nr); err != nil {
		return fmt.Errorf("add route %s: %w", r, err)
	}
	return nil
}

// RouteReplace is `ip route replace` (see Route).
func (h *Handle) RouteReplace(r Route) error {
	if err := h.nh.RouteReplace(toNLRoute(r)); err != nil {
		return fmt.Errorf("replace route %s: %w", r, err)
	}
	return nil
}

// RouteDel is `ip route del` of exactly r. A route already gone is not an
// error.
func (h *Handle) RouteDel(r Route) error {
	if err := ignoreNotFound(h.nh.RouteDel(toNLRoute(r))); err != nil {
		return fmt.Errorf("delete route %s: %w", r, err)
	}
	return nil
}

// ip6DefaultMetric is IP6_RT_PRIO_USER, the metric of an IPv6 route
// added without one.
const ip6DefaultMetric = 1024

// RouteList is `ip route show [table T] [dev D]`. It returns unicast
// single-path routes only: weft makes no others, and so never changes them.
// The dump runs on the batch socket, decoded in place (dump_linux.go).
func (h *Handle) RouteList(f RouteFilter) ([]Route, error) {
	var out []Route
	return dump(h, "list routes", func() ([]Route, error) {
		out = out[:0]
		return out, h.dumpEach(unix.RTM_GETROUTE, unix.RTM_NEWROUTE, uint8(f.Family), unix.SizeofRtMsg, func(m []byte) {
			if r, ok := decodeRoute(m, f); ok {
				out = append(out, r)
			}
		})
	})
}

// BlackholeList is `ip route show type blackhole` (main table) for one
// family (FamilyAll for both): the destinations of its blackhole routes.
func (h *Handle) BlackholeList(f Family) ([]netip.Prefix, error) {
	nrs, err := dump(h, "list blackhole routes", func() ([]netlink.Route, error) {
		return h.dh.RouteListFiltered(int(f), &netlink.Route{Type: unix.RTN_BLACKHOLE}, netlink.RT_FILTER_TYPE)
	})
	if err != nil {
		return nil, err
	}
	out := make([]netip.Prefix, 0, len(nrs))
	for _, nr := range nrs {
		if d, ok := fromIPNet(nr.Dst); ok {
			out = append(out, d)
		}
	}
	return out, nil
}

// BlackholeMetric is the metric of the blackhole routes weft adds: the
// largest, so that one is only the fallback for a subnet. flanneld adds its
// blackhole with metric 0, which takes the place of the CNI bridge's own
// route to the pods (or cannot be added beside it) and cuts the node's
// pods off; at the largest metric, the bridge's route wins while it exists
// and the blackhole catches what no route serves.
const BlackholeMetric = 1<<32 - 1

func blackholeRoute(p netip.Prefix) *netlink.Route {
	fam := netlink.FAMILY_V4
	if p.Addr().Is6() {
		fam = netlink.FAMILY_V6
	}
	return &netlink.Route{Dst: toIPNet(p), Type: unix.RTN_BLACKHOLE, Family: fam, Priority: BlackholeMetric}
}

// BlackholeAdd is `ip route add blackhole P metric BlackholeMetric`. It
// fails with an error for which IsExist is true when the main table has
// another route to P with that metric.
func (h *Handle) BlackholeAdd(p netip.Prefix) error {
	if err := h.nh.RouteAdd(blackholeRoute(p)); err != nil {
		return fmt.Errorf("add route blackhole %s: %w", p, err)
	}
	return nil
}

// BlackholeDel is `ip route del blackhole P metric BlackholeMetric`. A route already gone is not an
// error; a route to P of another type is left alone.
func (h *Handle) BlackholeDel(p netip.Prefix) error {
	if err := ignoreNotFound(h.nh.RouteDel(blackholeRoute(p))); err != nil {
		return fmt.Errorf("delete route blackhole %s: %w", p, err)
	}
	return nil
}

// RouteGet is `ip route get DST`: the kernel's own lookup, policy rules
// included, of the route a packet for dst would take and the source
// address it would get. Nothing is sent.
func (h *Handle) RouteGet(dst netip.Addr) (RouteLookup, error) {
	rs, err := h.nh.RouteGet(dst.AsSlice())
	if err != nil {
		return RouteLookup{}, fmt.Errorf("route get %s: %w", dst, err)
	}
	if len(rs) == 0 {
		return RouteLookup{}, fmt.Errorf("route get %s: the kernel returned no route", dst)
	}
	r := rs[0]
	return RouteLookup{LinkIndex: r.LinkIndex, Src: fromIP(r.Src), Gw: fromIP(r.Gw)}, nil
}

// DefaultRouteLink is the interface of the main table's first default
// route of family f (FamilyV4 or FamilyV6) in the kernel's order, which is
// lowest metric first: `ip route show default`, first line. ok is false
// when there is none; index is 0 when the kernel names no interface for
// that route (multipath; an IPv4 blackhole or unreachable route; IPv6
// ones name lo).
func (h *Handle) DefaultRouteLink(f Family) (index int, ok bool, err error) {
	nrs, err := dump(h, "list routes", func() ([]netlink.Route, error) {
		return h.dh.RouteListFiltered(int(f), &netlink.Route{}, 0)
	})
	if err != nil {
		return 0, false, err
	}
	for _, nr := range nrs {
		if nr.Dst == nil {
			return nr.LinkIndex, true, nil
		}
		if ones, _ := nr.Dst.Mask.Size(); ones == 0 && nr.Dst.IP.IsUnspecified() {
			return nr.LinkIndex, true, nil
		}
	}
	return 0, false, nil
}

func neighFamily(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// NeighSet is `ip neigh replace IP lladdr MAC nud STATE dev D` (see Neigh).
func (h *Handle) NeighSet(n Neigh) error {
	state := n.state()
	err := h.nh.NeighSet(&netlink.Neigh{
		LinkIndex:    n.LinkIndex,
		Family:       neighFamily(n.IP),
		State:        state,
		Type:         unix.RTN_UNICAST,
		IP:           n.IP.AsSlice(),
		HardwareAddr: n.MAC.HardwareAddr(),
	})
	if err != nil {
		return fmt.Errorf("replace neighbour %s: %w", n, err)
	}
	return nil
}

// NeighDel is `ip neigh del IP dev D`. An entry already gone is not an error.
func (h *Handle) NeighDel(n Neigh) error {
	err := h.nh.NeighDel(&netlink.Neigh{
		LinkIndex: n.LinkIndex,
		Family:    neighFamily(n.IP),
		IP:        n.IP.AsSlice(),
	})
	if err := ignoreNotFound(err); err != nil {
		return fmt.Errorf("delete neighbour %s: %w", n, err)
	}
	return nil
}

// NeighList is `ip neigh show dev D` for one family (FamilyV4 or FamilyV6).
// Entries without a link-layer address (incomplete, failed) have a zero MAC.
func (h *Handle) NeighList(linkIndex int, f Family) ([]Neigh, error) {
	var out []Neigh
	return dump(h, fmt.Sprintf("list neighbours of #%d", linkIndex), func() ([]Neigh, error) {
		out = out[:0]
		return out, h.neighEach(int(f), linkIndex, func(e neighEntry) {
			if e.ip.IsValid() {
				out = append(out, Neigh{LinkIndex: e.linkIndex, IP: e.ip, MAC: e.mac(), State: e.state})
			}
		})
	})
}

// neighEach dumps the neighbour table of family (AF_BRIDGE: the FDB) and
// calls f on each entry of link linkIndex (0: of every link) as its
// message is decoded, on the batch socket (dump_linux.go).
func (h *Handle) neighEach(family, linkIndex int, f func(neighEntry)) error {
	return h.dumpEach(unix.RTM_GETNEIGH, unix.RTM_NEWNEIGH, uint8(family), unix.SizeofNdMsg, func(m []byte) {
		if e, ok := decodeNeigh(m); ok && int(e.family) == family && (linkIndex == 0 || e.linkIndex == linkIndex) {
			f(e)
		}
	})
}

// FDBSet is `bridge fdb replace MAC dev D dst DST self permanent`.
func (h *Handle) FDBSet(e FDB) error {
	err := h.nh.NeighSet(&netlink.Neigh{
		LinkIndex:    e.LinkIndex,
		Family:       unix.AF_BRIDGE,
		Flags:        netlink.NTF_SELF,
		State:        netlink.NUD_PERMANENT,
		IP:           e.Dst.AsSlice(),
		HardwareAddr: e.MAC.HardwareAddr(),
	})
	if err != nil {
		return fmt.Errorf("replace fdb entry %s: %w", e, err)
	}
	return nil
}

// FDBDel is `bridge fdb del MAC dev D dst DST self`: it removes that one
// destination of MAC's entry. An entry already gone is not an error.
func (h *Handle) FDBDel(e FDB) error {
	err := h.nh.NeighDel(&netlink.Neigh{
		LinkIndex:    e.LinkIndex,
		Family:       unix.AF_BRIDGE,
		Flags:        netlink.NTF_SELF,
		IP:           e.Dst.AsSlice(),
		HardwareAddr: e.MAC.HardwareAddr(),
	})
	if err := ignoreNotFound(err); err != nil {
		return fmt.Errorf("delete fdb entry %s: %w", e, err)
	}
	return nil
}

// FDBList is `bridge fdb show dev D`, restricted to what FDBSet makes:
// unicast MACs with a destination IP. (The all-zero flood entries and the
// device's multicast addresses are left out.)
func (h *Handle) FDBList(linkIndex int) ([]FDB, error) {
	var out []FDB
	return dump(h, fmt.Sprintf("list fdb of #%d", linkIndex), func() ([]FDB, error) {
		out = out[:0]
		return out, h.neighEach(unix.AF_BRIDGE, linkIndex, func(e neighEntry) {
			if mac := e.mac(); mac.IsUnicast() && e.ip.IsValid() {
				out = append(out, FDB{LinkIndex: e.linkIndex, MAC: mac, Dst: e.ip})
			}
		})
	})
}
