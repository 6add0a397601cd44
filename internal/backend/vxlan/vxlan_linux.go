package vxlan

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

// encapOverhead is what VXLAN over IPv4 adds to each frame: outer IPv4
// (20), UDP (8), VXLAN (8) and the inner Ethernet header (14). Over IPv6
// the outer header is 20 bytes longer.
const (
	encapOverhead  = 50
	encapOverhead6 = 70
)

// Backend is the vxlan datapath of one node, in the namespace of its handle:
// flannel.<VNI> for IPv4 and, with EnableIPv6, flannel-v6.<VNI> beside it.
// Each device is planned and converged by the same code, per family.
type Backend struct {
	p   backend.Params
	h   *netlinkx.Handle
	log *slog.Logger

	vni  int
	port int
	mtu  int // pods' (FLANNEL_MTU) and flannel.<VNI>'s

	v4, v6 *device // nil when the config disables the family
	devs   []*device
}

// device is the state of one family's VXLAN device.
type device struct {
	v6    bool
	name  string     // flannel.<VNI> or flannel-v6.<VNI>
	local netip.Addr // tunnel source on the underlay
	mtu   int
	log   *slog.Logger

	mac  netlinkx.MAC // published VtepMAC; a recreated device gets it again
	link int          // ifindex of the device; 0 until known
	// linkNow is link for ReadAhead, which runs beside the other methods.
	linkNow atomic.Int64

	// plan is the state the kernel was last converged to when synced, the
	// base of an incremental reconcile and of Update; !synced forces the
	// next reconcile to be full.
	plan   Planner
	synced bool
	own    netip.Prefix // subnet plan was made for
	skips  backend.SkipLog
}

func (d *device) setLink(index int) {
	d.link = index
	d.linkNow.Store(int64(index))
}

// subnet is own's subnet of d's family.
func (d *device) subnet(own lease.Lease) netip.Prefix {
	if d.v6 {
		return own.IPv6Subnet
	}
	return own.Subnet
}

func (d *device) family() string {
	if d.v6 {
		return "IPv6"
	}
	return "IPv4"
}

var (
	_ backend.Backend    = (*Backend)(nil)
	_ backend.Updater    = (*Backend)(nil)
	_ backend.V6Backend  = (*Backend)(nil)
	_ backend.Identifier = (*Backend)(nil)
)

// Identities implements backend.Identifier: the lease's VtepMAC.
func (b *Backend) Identities(l lease.Lease) []string { return Identities(l) }

// New returns the vxlan backend for p, programming the namespace of h.
func New(p backend.Params, h *netlinkx.Handle, log *slog.Logger) (*Backend, error) {
	if p.Network == nil || (!p.Network.EnableIPv4 && !p.Network.EnableIPv6) {
		return nil, errors.New("vxlan: no cluster network configured")
	}
	if p.Ext.Index <= 0 {
		return nil, fmt.Errorf("vxlan: underlay %q has no ifindex", p.Ext.Name)
	}
	cfg := p.Network.Backend
	b := &Backend{p: p, h: h, log: log, vni: cfg.VNI, port: cfg.Port}
	if b.vni == 0 {
		b.vni = config.DefaultVNI
	}
	if b.port == 0 {
		b.port = config.DefaultVXLANPort
	}
	b.mtu = cfg.MTU
	if b.mtu == 0 {
		b.mtu = p.Ext.MTU - encapOverhead
	}
	vni := strconv.Itoa(b.vni)
	if p.Network.EnableIPv4 && p.Network.Network.IsValid() {
		if !p.Ext.Addr.Is4() {
			return nil, fmt.Errorf("vxlan: underlay %q needs an IPv4 address for flannel.%s (have %v)", p.Ext.Name, vni, p.Ext.Addr)
		}
		b.v4 = &device{name: "flannel." + vni, local: p.Ext.Addr, mtu: b.mtu}
	}
	if p.Network.EnableIPv6 && p.Network.IPv6Network.IsValid() {
		if !p.Ext.Addr6.Is6() || p.Ext.Addr6.Is4In6() {
			return nil, fmt.Errorf("vxlan: underlay %q needs an IPv6 address for flannel-v6.%s (have %v)", p.Ext.Name, vni, p.Ext.Addr6)
		}
		// FLANNEL_MTU stays the IPv4 figure, as flannel's; flannel-v6.<VNI>
		// gets what the kernel gives a VXLAN device over IPv6 (it refuses
		// more), and the tunnel's PMTU check tells IPv6 senders.
		b.v6 = &device{v6: true, name: "flannel-v6." + vni, local: p.Ext.Addr6, mtu: min(b.mtu, p.Ext.MTU-encapOverhead6)}
	}
	for _, d := range []*device{b.v4, b.v6} {
		if d != nil {
			d.log = log.With("backend", config.BackendVXLAN, "device", d.name)
			b.devs = append(b.devs, d)
		}
	}
	if len(b.devs) == 0 {
		return nil, errors.New("vxlan: the config enables no family with a network")
	}
	b.log = b.devs[0].log
	for _, d := range b.devs {
		least := 68
		if d.v6 {
			least = 1280
		}
		if d.mtu < least {
			return nil, fmt.Errorf("vxlan: MTU %d of %s leaves %d for %s, below %s's minimum %d", p.Ext.MTU, p.Ext.Name, d.mtu, d.name, d.family(), least)
		}
	}
	for _, r := range []struct {
		d   *device
		mac net.HardwareAddr
	}{{b.v4, p.VtepMAC}, {b.v6, p.VtepMACv6}} {
		if r.d == nil || len(r.mac) == 0 {
			continue
		}
		mac, err := netlinkx.MACFrom(r.mac)
		if err != nil {
			return nil, fmt.Errorf("vxlan: published %s VtepMAC: %w", r.d.family(), err)
		}
		// The published MAC wins over a new random one and over a device
		// whose MAC changed: it is what the other nodes route to.
		r.d.mac = mac
		r.d.log.Info("restoring the published VtepMAC", "mac", mac)
	}
	return b, nil
}

// Name is the IPv4 VXLAN device's name, flannel.<VNI>; "" without IPv4.
func (b *Backend) Name() string {
	if b.v4 == nil {
		return ""
	}
	return b.v4.name
}

// MAC is flannel.<VNI>'s MAC, the published VtepMAC (zero before LeaseAttrs
// or without IPv4).
func (b *Backend) MAC() netlinkx.MAC {
	if b.v4 == nil {
		return netlinkx.MAC{}
	}
	return b.v4.mac
}

// NameV6 is the IPv6 device's name, flannel-v6.<VNI>; "" without IPv6.
func (b *Backend) NameV6() string {
	if b.v6 == nil {
		return ""
	}
	return b.v6.name
}

// MACV6 is flannel-v6.<VNI>'s MAC, published in BackendV6Data.
func (b *Backend) MACV6() netlinkx.MAC {
	if b.v6 == nil {
		return netlinkx.MAC{}
	}
	return b.v6.mac
}

// LeaseAttrs creates the devices, or keeps matching ones and their MACs, and
// returns {"VNI":N,"VtepMAC":"…"} of flannel.<VNI> (none without IPv4, as
// flannel); LeaseV6Data has flannel-v6.<VNI>'s.
func (b *Backend) LeaseAttrs(ctx context.Context) (string, json.RawMessage, error) {
	for _, d := range b.devs {
		if _, err := b.device(ctx, d); err != nil {
			return "", nil, err
		}
	}
	if b.v4 == nil {
		return config.BackendVXLAN, nil, nil
	}
	data, err := json.Marshal(BackendData{VNI: b.vni, VtepMAC: b.v4.mac})
	if err != nil {
		return "", nil, fmt.Errorf("vxlan: backend data: %w", err)
	}
	return config.BackendVXLAN, data, nil
}

// LeaseV6Data implements backend.V6Backend: BackendV6Data after
// LeaseAttrs, nil without IPv6.
func (b *Backend) LeaseV6Data() json.RawMessage {
	if b.v6 == nil || b.v6.mac.IsZero() {
		return nil
	}
	data, _ := json.Marshal(BackendData{VNI: b.vni, VtepMAC: b.v6.mac}) // cannot fail: two plain fields
	return data
}

// Configure gives each device this node's VTEP address, the subnet's
// network address /32 (/128) — flannel puts 10.244.1.0/32 on flannel.1 and
// the pod bridge takes .1 — and returns the pod MTU. Pods keep the
// kernel's GSO limit: the kernel cannot put a packet over 64 KiB into one
// UDP datagram, so BIG TCP does not cross the tunnel.
func (b *Backend) Configure(ctx context.Context, own lease.Lease) (backend.PodLink, error) {
	for _, d := range b.devs {
		if !d.subnet(own).IsValid() {
			return backend.PodLink{}, fmt.Errorf("vxlan: own lease has no %s subnet", d.family())
		}
		l, err := b.device(ctx, d)
		if err != nil {
			return backend.PodLink{}, err
		}
		if err := b.address(d, l, d.subnet(own)); err != nil {
			return backend.PodLink{}, err
		}
	}
	return backend.PodLink{MTU: b.mtu}, nil
}

// Reconcile converges each device's routes, neighbours and FDB to the lease
// set. With full, or when the previous call failed, it reads them back from
// the kernel (and recreates the device, with the same MAC, if it is gone);
// otherwise it applies only the change since the previous call.
func (b *Backend) Reconcile(ctx context.Context, own lease.Lease, leases []lease.Lease, full bool) error {
	return b.reconcileAll(ctx, own, leases, full, nil)
}

// reconcileAll is Reconcile, with what ReadAhead read of the devices.
func (b *Backend) reconcileAll(ctx context.Context, own lease.Lease, leases []lease.Lease, full bool, read map[*device]readAhead) error {
	var errs []error
	for _, d := range b.devs {
		if err := ctx.Err(); err != nil {
			return err
		}
		var ra *readAhead
		if r, ok := read[d]; ok {
			ra = &r
		}
		if err := b.reconcile(ctx, d, own, leases, full, ra); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (b *Backend) reconcile(ctx context.Context, d *device, own lease.Lease, leases []lease.Lease, full bool, ra *readAhead) error {
	if !d.subnet(own).IsValid() {
		return fmt.Errorf("vxlan: own lease has no %s subnet", d.family())
	}
	if full || !d.synced || d.link == 0 || d.subnet(own) != d.own {
		return b.reconcileFull(ctx, d, own, leases, ra)
	}
	have, _ := d.plan.State()
	want, skipped := d.plan.Desired(b.params(d, own), leases)
	d.skips.Report(d.log, skipped)
	n, err := b.apply(have, want, nil, nil, false)
	if err != nil {
		d.synced = false // the kernel is now somewhere in between: re-read it next time
		return fmt.Errorf("vxlan: %s: %w", d.name, err)
	}
	if n > 0 {
		d.log.Debug("reconciled", "changes", n, "leases", len(leases))
	}
	return nil
}

// Update implements backend.Updater: it plans evs against the lease set
// of the previous call and writes just the entries they change (for a new
// lease: a neighbour, an FDB entry and a route per family), reading
// nothing back.
func (b *Backend) Update(ctx context.Context, own lease.Lease, evs []lease.Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// All devices or none: a half-applied batch would leave the other
	// family's planner behind the events.
	for _, d := range b.devs {
		if !d.synced || d.link == 0 || d.subnet(own) != d.own {
			return backend.ErrStale
		}
	}
	var errs []error
	for _, d := range b.devs {
		before, after, verdicts := d.plan.Update(evs)
		for _, v := range verdicts {
			d.skips.Set(d.log, v)
		}
		n, err := b.apply(before, after, nil, nil, false)
		if err != nil {
			d.synced = false
			errs = append(errs, fmt.Errorf("vxlan: %s: %w", d.name, err))
			continue
		}
		if n > 0 {
			d.log.Debug("updated", "changes", n, "events", len(evs))
		}
	}
	return errors.Join(errs...)
}

// ReadAhead reads what a full Reconcile compares the lease set with: each
// device's routes, neighbours and FDB entries, which at 5,000 leases are
// most of a full pass's time. It may run on any goroutine while the other
// methods run (it reads the kernel and, atomically, the devices'
// ifindexes), so that the daemon's event loop goes on with events
// meanwhile. It returns that full Reconcile, against what it read, to be
// called like the other methods.
//
// What was read may be older than a change made since, by Update or by
// hand. The pass then writes an entry again (a replace of what is there
// and a delete of what is gone change nothing), or misses a change made by
// hand, which the agent's watch of the kernel repairs with a pass of its
// own. A device recreated since is read again.
func (b *Backend) ReadAhead(ctx context.Context) (func(context.Context, lease.Lease, []lease.Lease) error, error) {
	read := make(map[*device]readAhead, len(b.devs))
	for _, d := range b.devs {
		link := int(d.linkNow.Load())
		if link == 0 {
			continue
		}
		p := Params{IPv6: d.v6, Link: link, DirectRouting: b.p.Network.Backend.DirectRouting, Underlay: b.p.Ext.Index}
		st, err := b.read(p)
		if err != nil {
			return nil, fmt.Errorf("vxlan: %s: %w", d.name, err)
		}
		read[d] = readAhead{link: link, st: st}
	}
	return func(ctx context.Context, own lease.Lease, leases []lease.Lease) error {
		return b.reconcileAll(ctx, own, leases, true, read)
	}, nil
}

// readAhead is what ReadAhead read of a device, with the ifindex it had.
type readAhead struct {
	link int
	st   State
}

// reconcileFull converges d to the lease set against what the kernel
// holds: read now, or read ahead in ra when it is of the device as it is.
func (b *Backend) reconcileFull(ctx context.Context, d *device, own lease.Lease, leases []lease.Lease, ra *readAhead) error {
	d.synced = false
	l, err := b.device(ctx, d)
	if err != nil {
		return err
	}
	if err := b.address(d, l, d.subnet(own)); err != nil {
		return err
	}
	p := b.params(d, own)
	want, skipped := d.plan.Desired(p, leases)
	d.skips.Report(d.log, skipped)

	var have State
	if ra != nil && ra.link == d.link {
		have = ra.st
	} else if have, err = b.read(p); err != nil {
		return fmt.Errorf("vxlan: %s: %w", d.name, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// Routes inside our own subnet are the kernel's (the prefix route of
	// flannel-v6.<VNI>'s /128) or the bridge's, never a peer's.
	ownedRoute := func(r netlinkx.Route) bool {
		return backend.Manages(p.Network, p.Own, r.Dst) && !p.Own.Overlaps(r.Dst)
	}
	ownedNeigh := func(n netlinkx.Neigh) bool { return p.Network.Contains(n.IP) }
	n, err := b.apply(have, want, ownedRoute, ownedNeigh, true)
	if err != nil {
		return fmt.Errorf("vxlan: %s: %w", d.name, err)
	}
	if n > 0 {
		d.log.Info("converged kernel state", "changes", n, "routes", len(want.Routes), "leases", len(leases))
	}
	d.synced, d.own = true, d.subnet(own)
	return nil
}

func (b *Backend) params(d *device, own lease.Lease) Params {
	p := Params{
		IPv6:           d.v6,
		Network:        b.p.Network.Network,
		Own:            own.Subnet,
		PublicIP:       b.p.PublicIP(own),
		VNI:            b.vni,
		Link:           d.link,
		DirectRouting:  b.p.Network.Backend.DirectRouting,
		Underlay:       b.p.Ext.Index,
		UnderlaySubnet: b.p.Ext.Subnet,
	}
	if d.v6 {
		p.Network, p.Own, p.PublicIP, p.UnderlaySubnet = b.p.Network.IPv6Network, own.IPv6Subnet, b.p.PublicIPv6(own), b.p.Ext.Subnet6
	}
	return p
}

// read dumps what the kernel holds on the device (and, with DirectRouting,
// the routes on the underlay) for the family of p.
func (b *Backend) read(p Params) (State, error) {
	fam := netlinkx.FamilyV4
	if p.IPv6 {
		fam = netlinkx.FamilyV6
	}
	var st State
	var err error
	if st.Routes, err = b.h.RouteList(netlinkx.RouteFilter{Family: fam, LinkIndex: p.Link}); err != nil {
		return st, err
	}
	if p.DirectRouting {
		ul, err := b.h.RouteList(netlinkx.RouteFilter{Family: fam, LinkIndex: p.Underlay})
		if err != nil {
			return st, err
		}
		st.Routes = append(st.Routes, ul...)
	}
	if st.Neighs, err = b.h.NeighList(p.Link, fam); err != nil {
		return st, err
	}
	if st.FDB, err = b.h.FDBList(p.Link); err != nil {
		return st, err
	}
	return st, nil
}

// apply takes the kernel from have to want, in an order that never leaves a
// route without its neighbour and FDB entry: withdraw routes, install
// neighbours and FDB entries, install routes, drop old neighbours and FDB
// entries. It carries on past failures and returns them all, with the
// number of changes made. With batched (a full pass: thousands of changes
// at start) it writes many changes per system call, in the same order; an
// update's few changes go one at a time.
func (b *Backend) apply(have, want State, ownedRoute func(netlinkx.Route) bool, ownedNeigh func(netlinkx.Neigh) bool, batched bool) (int, error) {
	rPut, rDel := backend.Diff(have.Routes, want.Routes, netlinkx.Route.Key, ownedRoute)
	nPut, nDel := backend.Diff(have.Neighs, want.Neighs, netlinkx.Neigh.Key, ownedNeigh)
	fPut, fDel := backend.Diff(have.FDB, want.FDB, netlinkx.FDB.Key, nil)
	n := len(rDel) + len(nPut) + len(fPut) + len(rPut) + len(nDel) + len(fDel)
	if n == 0 {
		return 0, nil
	}
	var w writer = b.h
	var q queue
	if batched {
		q = queue{b.h.NewBatch()}
		w = q
	}
	var errs []error
	for _, r := range rDel {
		errs = append(errs, w.RouteDel(r))
	}
	for _, x := range nPut {
		errs = append(errs, w.NeighSet(x))
	}
	for _, f := range fPut {
		errs = append(errs, w.FDBSet(f))
	}
	for _, r := range rPut {
		errs = append(errs, w.RouteReplace(r))
	}
	for _, x := range nDel {
		errs = append(errs, w.NeighDel(x))
	}
	for _, f := range fDel {
		errs = append(errs, w.FDBDel(f))
	}
	if q.Batch != nil {
		errs = q.Flush()
	}
	return n, errors.Join(errs...)
}

// writer is what apply writes with: the Handle, one change per call, or
// a queue on a batch.
type writer interface {
	RouteReplace(netlinkx.Route) error
	RouteDel(netlinkx.Route) error
	NeighSet(netlinkx.Neigh) error
	NeighDel(netlinkx.Neigh) error
	FDBSet(netlinkx.FDB) error
	FDBDel(netlinkx.FDB) error
}

// queue is a Batch as a writer: each call queues, and the answers come
// from Flush.
type queue struct{ *netlinkx.Batch }

func (q queue) RouteReplace(r netlinkx.Route) error { q.Batch.RouteReplace(r); return nil }
func (q queue) RouteDel(r netlinkx.Route) error     { q.Batch.RouteDel(r); return nil }
func (q queue) NeighSet(n netlinkx.Neigh) error     { q.Batch.NeighSet(n); return nil }
func (q queue) NeighDel(n netlinkx.Neigh) error     { q.Batch.NeighDel(n); return nil }
func (q queue) FDBSet(f netlinkx.FDB) error         { q.Batch.FDBSet(f); return nil }
func (q queue) FDBDel(f netlinkx.FDB) error         { q.Batch.FDBDel(f); return nil }

// device makes sure d's device exists as configured, and is up with the
// right MTU (and, for IPv6, accept_ra=0). A device that matches is kept
// with its MAC, so a restarted agent publishes the same VtepMAC; one that
// does not is recreated, and a recreated device gets the MAC already
// published, so that the other nodes' FDB entries stay valid.
func (b *Backend) device(ctx context.Context, d *device) (netlinkx.Link, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l, err := b.h.LinkByName(d.name)
	switch {
	case netlinkx.IsNotFound(err):
		if d.link != 0 {
			d.log.Warn("device is gone; recreating it with the same MAC", "mac", d.mac)
		}
		return b.create(d)
	case err != nil:
		return nil, fmt.Errorf("vxlan: %w", err)
	}
	vx, ok := l.(*netlinkx.Vxlan)
	if !ok {
		return nil, fmt.Errorf("vxlan: %s exists but is a %s device, not vxlan; remove it", d.name, l.Type())
	}
	if why := b.mismatch(d, vx); why != "" {
		if d.mac.IsZero() {
			d.mac, _ = netlinkx.MACFrom(vx.HardwareAddr)
		}
		d.log.Info("recreating device: its settings differ from the config", "differs", why)
		if err := b.h.LinkDel(l); err != nil {
			return nil, fmt.Errorf("vxlan: %w", err)
		}
		return b.create(d)
	}
	mac, err := netlinkx.MACFrom(vx.HardwareAddr)
	if err != nil {
		return nil, fmt.Errorf("vxlan: %s: %w", d.name, err)
	}
	switch {
	case d.mac.IsZero():
		d.mac = mac
	case mac != d.mac:
		// Changed by hand: the published VtepMAC wins.
		if err := b.h.LinkSetHardwareAddr(l, d.mac); err != nil {
			return nil, fmt.Errorf("vxlan: %w", err)
		}
	}
	if l.Attrs().MTU != d.mtu {
		if err := b.h.LinkSetMTU(l, d.mtu); err != nil {
			return nil, fmt.Errorf("vxlan: %w", err)
		}
	}
	if err := b.noRA(d); err != nil {
		return nil, err
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := b.h.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("vxlan: %w", err)
		}
	}
	if d.link != 0 && d.link != l.Attrs().Index {
		d.synced = false // entries hang off the old ifindex
	}
	d.setLink(l.Attrs().Index)
	return l, nil
}

// noRA sets accept_ra=0 on the IPv6 device, as flannel does: a router
// advertisement there must not add addresses or routes. Written on every
// full pass, so that a change by hand is repaired like the rest.
func (b *Backend) noRA(d *device) error {
	if !d.v6 {
		return nil
	}
	if err := b.h.SetSysctl("net/ipv6/conf/"+d.name+"/accept_ra", "0"); err != nil {
		return fmt.Errorf("vxlan: %w", err)
	}
	return nil
}

// mismatch names the first setting in which vx differs from the config
// (one that cannot be changed in place), or returns "".
func (b *Backend) mismatch(d *device, vx *netlinkx.Vxlan) string {
	cfg := b.p.Network.Backend
	src, _ := netip.AddrFromSlice(vx.SrcAddr)
	if !d.v6 {
		src = src.Unmap()
	}
	switch {
	case vx.VxlanId != b.vni:
		return fmt.Sprintf("VNI %d, want %d", vx.VxlanId, b.vni)
	case vx.Port != b.port:
		return fmt.Sprintf("port %d, want %d", vx.Port, b.port)
	case src != d.local:
		return fmt.Sprintf("local %v, want %s", vx.SrcAddr, d.local)
	case vx.VtepDevIndex != b.p.Ext.Index:
		return fmt.Sprintf("underlay #%d, want %s (#%d)", vx.VtepDevIndex, b.p.Ext.Name, b.p.Ext.Index)
	case vx.Learning != cfg.Learning:
		return fmt.Sprintf("learning %v, want %v", vx.Learning, cfg.Learning)
	case vx.GBP != cfg.GBP:
		return fmt.Sprintf("gbp %v, want %v", vx.GBP, cfg.GBP)
	}
	return ""
}

// create is `ip link add NAME address MAC mtu M type vxlan id N local
// ADDR dev UNDERLAY dstport PORT nolearning [gbp]` followed by (for IPv6)
// accept_ra=0 and `up`.
func (b *Backend) create(d *device) (netlinkx.Link, error) {
	if d.mac.IsZero() {
		// Chosen here rather than by the kernel so that udev's MAC policy
		// cannot change it after the fact, and so that it can be restored.
		if _, err := rand.Read(d.mac[:]); err != nil {
			return nil, fmt.Errorf("vxlan: random MAC: %w", err)
		}
		d.mac[0] = d.mac[0]&^1 | 2 // unicast, locally administered
	}
	cfg := b.p.Network.Backend
	la := netlinkx.NewLinkAttrs()
	la.Name, la.MTU, la.HardwareAddr = d.name, d.mtu, d.mac.HardwareAddr()
	vx := &netlinkx.Vxlan{
		LinkAttrs:    la,
		VxlanId:      b.vni,
		VtepDevIndex: b.p.Ext.Index,
		SrcAddr:      d.local.AsSlice(),
		Port:         b.port,
		Learning:     cfg.Learning,
		GBP:          cfg.GBP,
	}
	if err := b.h.LinkAdd(vx); err != nil {
		return nil, fmt.Errorf("vxlan: %w", err)
	}
	l, err := b.h.LinkByName(d.name)
	if err != nil {
		return nil, fmt.Errorf("vxlan: %w", err)
	}
	if err := b.noRA(d); err != nil {
		return nil, err
	}
	if err := b.h.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("vxlan: %w", err)
	}
	d.log.Info("created device", "mac", d.mac, "mtu", d.mtu, "vni", b.vni, "port", b.port, "local", d.local, "underlay", b.p.Ext.Name)
	d.synced = false
	d.setLink(l.Attrs().Index)
	return l, nil
}

// address leaves exactly <subnet network address>/32 (/128) on the device,
// besides IPv6 link-local addresses, which the kernel keeps there.
func (b *Backend) address(d *device, l netlinkx.Link, subnet netip.Prefix) error {
	fam := netlinkx.FamilyV4
	if d.v6 {
		fam = netlinkx.FamilyV6
	}
	want := netip.PrefixFrom(lease.SubnetIP(subnet), subnet.Addr().BitLen())
	all, err := b.h.AddrList(l, fam)
	if err != nil {
		return fmt.Errorf("vxlan: %w", err)
	}
	have := slices.DeleteFunc(all, func(p netip.Prefix) bool { return p.Addr().IsLinkLocalUnicast() })
	if len(have) == 1 && have[0] == want {
		return nil
	}
	if err := b.h.AddrReplace(l, want); err != nil {
		return fmt.Errorf("vxlan: %w", err)
	}
	for _, a := range have {
		if a != want {
			// Left over from an earlier lease.
			if err := b.h.AddrDel(l, a); err != nil {
				return fmt.Errorf("vxlan: %w", err)
			}
		}
	}
	return nil
}

// Close does nothing: the kernel datapath outlives the agent.
func (b *Backend) Close() error { return nil }

// Devices implements backend.Devicer: flannel.<VNI> and flannel-v6.<VNI>,
// as the config has them.
func (b *Backend) Devices() []string {
	names := make([]string, len(b.devs))
	for i, d := range b.devs {
		names[i] = d.name
	}
	return names
}
