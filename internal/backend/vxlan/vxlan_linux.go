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
	"strconv"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

// encapOverhead is what VXLAN over IPv4 adds to each frame: outer IPv4
// (20), UDP (8), VXLAN (8) and the inner Ethernet header (14).
const encapOverhead = 50

// Backend is the vxlan datapath of one node, in the namespace of its handle.
type Backend struct {
	p   backend.Params
	h   *netlinkx.Handle
	log *slog.Logger

	name string // flannel.<VNI>
	vni  int
	port int
	mtu  int

	mac  netlinkx.MAC // published VtepMAC; a recreated device gets it again
	link int          // ifindex of the device; 0 until known

	// plan is the state the kernel was last converged to when synced, the
	// base of an incremental reconcile and of Update; !synced forces the
	// next reconcile to be full.
	plan   Planner
	synced bool
	own    netip.Prefix // subnet plan was made for
	skips  backend.SkipLog
}

var (
	_ backend.Backend    = (*Backend)(nil)
	_ backend.Updater    = (*Backend)(nil)
	_ backend.Identifier = (*Backend)(nil)
)

// Identities implements backend.Identifier: the lease's VtepMAC.
func (b *Backend) Identities(l lease.Lease) []string { return Identities(l) }

// New returns the vxlan backend for p, programming the namespace of h.
func New(p backend.Params, h *netlinkx.Handle, log *slog.Logger) (*Backend, error) {
	if p.Network == nil || !p.Network.Network.IsValid() {
		return nil, errors.New("vxlan: no IPv4 cluster network configured (IPv6-only is not supported by this backend)")
	}
	if !p.Ext.Addr.Is4() || p.Ext.Index <= 0 {
		return nil, fmt.Errorf("vxlan: underlay %q needs an IPv4 address and an ifindex (have %v, #%d)", p.Ext.Name, p.Ext.Addr, p.Ext.Index)
	}
	cfg := p.Network.Backend
	b := &Backend{p: p, h: h, log: log, vni: cfg.VNI, port: cfg.Port}
	if b.vni == 0 {
		b.vni = config.DefaultVNI
	}
	if b.port == 0 {
		b.port = config.DefaultVXLANPort
	}
	b.name = "flannel." + strconv.Itoa(b.vni)
	b.mtu = cfg.MTU
	if b.mtu == 0 {
		b.mtu = p.Ext.MTU - encapOverhead
	}
	if b.mtu < 68 {
		return nil, fmt.Errorf("vxlan: MTU %d of %s leaves %d for %s, below IPv4's minimum 68", p.Ext.MTU, p.Ext.Name, b.mtu, b.name)
	}
	b.log = log.With("backend", config.BackendVXLAN, "device", b.name)
	if len(p.VtepMAC) > 0 {
		mac, err := netlinkx.MACFrom(p.VtepMAC)
		if err != nil {
			return nil, fmt.Errorf("vxlan: published VtepMAC: %w", err)
		}
		// The published MAC wins over a new random one and over a device
		// whose MAC changed: it is what the other nodes route to.
		b.mac = mac
		b.log.Info("restoring the published VtepMAC", "mac", mac)
	}
	return b, nil
}

// Name is the VXLAN device's name, flannel.<VNI>.
func (b *Backend) Name() string { return b.name }

// MAC is the device's MAC, the published VtepMAC (zero before LeaseAttrs).
func (b *Backend) MAC() netlinkx.MAC { return b.mac }

// LeaseAttrs creates the device, or keeps a matching one and its MAC, and
// returns {"VNI":N,"VtepMAC":"…"}.
func (b *Backend) LeaseAttrs(ctx context.Context) (string, json.RawMessage, error) {
	if _, err := b.device(ctx); err != nil {
		return "", nil, err
	}
	data, err := json.Marshal(BackendData{VNI: b.vni, VtepMAC: b.mac})
	if err != nil {
		return "", nil, fmt.Errorf("vxlan: backend data: %w", err)
	}
	return config.BackendVXLAN, data, nil
}

// Configure gives the device this node's VTEP address, the subnet's network
// address /32 (flannel puts 10.244.1.0/32 on flannel.1; the pod bridge takes
// .1), and returns the pod MTU. Pods keep the kernel's GSO limit: the
// kernel cannot put a packet over 64 KiB into one UDP datagram, so BIG TCP
// does not cross the tunnel.
func (b *Backend) Configure(ctx context.Context, own lease.Lease) (backend.PodLink, error) {
	if !own.Subnet.IsValid() {
		return backend.PodLink{}, errors.New("vxlan: own lease has no IPv4 subnet")
	}
	l, err := b.device(ctx)
	if err != nil {
		return backend.PodLink{}, err
	}
	if err := b.address(l, own.Subnet); err != nil {
		return backend.PodLink{}, err
	}
	return backend.PodLink{MTU: b.mtu}, nil
}

// Reconcile converges the device's routes, neighbours and FDB to the lease
// set. With full, or when the previous call failed, it reads them back from
// the kernel (and recreates the device, with the same MAC, if it is gone);
// otherwise it applies only the change since the previous call.
func (b *Backend) Reconcile(ctx context.Context, own lease.Lease, leases []lease.Lease, full bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !own.Subnet.IsValid() {
		return errors.New("vxlan: own lease has no IPv4 subnet")
	}
	if full || !b.synced || b.link == 0 || own.Subnet != b.own {
		return b.reconcileFull(ctx, own, leases)
	}
	have, _ := b.plan.State()
	want, skipped := b.plan.Desired(b.params(own), leases)
	b.skips.Report(b.log, skipped)
	n, err := b.apply(have, want, nil, nil)
	if err != nil {
		b.synced = false // the kernel is now somewhere in between: re-read it next time
		return fmt.Errorf("vxlan: %w", err)
	}
	if n > 0 {
		b.log.Debug("reconciled", "changes", n, "leases", len(leases))
	}
	return nil
}

// Update implements backend.Updater: it plans evs against the lease set
// of the previous call and writes just the entries they change (for a new
// lease: a neighbour, an FDB entry and a route), reading nothing back.
func (b *Backend) Update(ctx context.Context, own lease.Lease, evs []lease.Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !b.synced || b.link == 0 || own.Subnet != b.own {
		return backend.ErrStale
	}
	before, after, verdicts := b.plan.Update(evs)
	for _, v := range verdicts {
		b.skips.Set(b.log, v)
	}
	n, err := b.apply(before, after, nil, nil)
	if err != nil {
		b.synced = false
		return fmt.Errorf("vxlan: %w", err)
	}
	if n > 0 {
		b.log.Debug("updated", "changes", n, "events", len(evs))
	}
	return nil
}

func (b *Backend) reconcileFull(ctx context.Context, own lease.Lease, leases []lease.Lease) error {
	b.synced = false
	l, err := b.device(ctx)
	if err != nil {
		return err
	}
	if err := b.address(l, own.Subnet); err != nil {
		return err
	}
	p := b.params(own)
	want, skipped := b.plan.Desired(p, leases)
	b.skips.Report(b.log, skipped)

	have, err := b.read(p)
	if err != nil {
		return fmt.Errorf("vxlan: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ownedRoute := func(r netlinkx.Route) bool { return backend.Manages(p.Network, p.Own, r.Dst) }
	ownedNeigh := func(n netlinkx.Neigh) bool { return p.Network.Contains(n.IP) }
	n, err := b.apply(have, want, ownedRoute, ownedNeigh)
	if err != nil {
		return fmt.Errorf("vxlan: %w", err)
	}
	if n > 0 {
		b.log.Info("converged kernel state", "changes", n, "routes", len(want.Routes), "leases", len(leases))
	}
	b.synced, b.own = true, own.Subnet
	return nil
}

func (b *Backend) params(own lease.Lease) Params {
	return Params{
		Network:        b.p.Network.Network,
		Own:            own.Subnet,
		PublicIP:       b.p.PublicIP(own),
		VNI:            b.vni,
		Link:           b.link,
		DirectRouting:  b.p.Network.Backend.DirectRouting,
		Underlay:       b.p.Ext.Index,
		UnderlaySubnet: b.p.Ext.Subnet,
	}
}

// read dumps what the kernel holds on the device (and, with DirectRouting,
// the routes on the underlay).
func (b *Backend) read(p Params) (State, error) {
	var st State
	var err error
	if st.Routes, err = b.h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4, LinkIndex: p.Link}); err != nil {
		return st, err
	}
	if p.DirectRouting {
		ul, err := b.h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4, LinkIndex: p.Underlay})
		if err != nil {
			return st, err
		}
		st.Routes = append(st.Routes, ul...)
	}
	if st.Neighs, err = b.h.NeighList(p.Link, netlinkx.FamilyV4); err != nil {
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
// number of changes made.
func (b *Backend) apply(have, want State, ownedRoute func(netlinkx.Route) bool, ownedNeigh func(netlinkx.Neigh) bool) (int, error) {
	rPut, rDel := backend.Diff(have.Routes, want.Routes, netlinkx.Route.Key, ownedRoute)
	nPut, nDel := backend.Diff(have.Neighs, want.Neighs, netlinkx.Neigh.Key, ownedNeigh)
	fPut, fDel := backend.Diff(have.FDB, want.FDB, netlinkx.FDB.Key, nil)
	var errs []error
	n := 0
	do := func(err error) {
		n++
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, r := range rDel {
		do(b.h.RouteDel(r))
	}
	for _, x := range nPut {
		do(b.h.NeighSet(x))
	}
	for _, f := range fPut {
		do(b.h.FDBSet(f))
	}
	for _, r := range rPut {
		do(b.h.RouteReplace(r))
	}
	for _, x := range nDel {
		do(b.h.NeighDel(x))
	}
	for _, f := range fDel {
		do(b.h.FDBDel(f))
	}
	return n, errors.Join(errs...)
}

// device makes sure flannel.<VNI> exists as configured, and is up with the
// right MTU. A device that matches is kept with its MAC, so a restarted
// agent publishes the same VtepMAC; one that does not is recreated, and a
// recreated device gets the MAC already published, so that the other nodes'
// FDB entries stay valid.
func (b *Backend) device(ctx context.Context) (netlinkx.Link, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l, err := b.h.LinkByName(b.name)
	switch {
	case netlinkx.IsNotFound(err):
		if b.link != 0 {
			b.log.Warn("device is gone; recreating it with the same MAC", "mac", b.mac)
		}
		return b.create()
	case err != nil:
		return nil, fmt.Errorf("vxlan: %w", err)
	}
	vx, ok := l.(*netlinkx.Vxlan)
	if !ok {
		return nil, fmt.Errorf("vxlan: %s exists but is a %s device, not vxlan; remove it", b.name, l.Type())
	}
	if why := b.mismatch(vx); why != "" {
		if b.mac.IsZero() {
			b.mac, _ = netlinkx.MACFrom(vx.HardwareAddr)
		}
		b.log.Info("recreating device: its settings differ from the config", "differs", why)
		if err := b.h.LinkDel(l); err != nil {
			return nil, fmt.Errorf("vxlan: %w", err)
		}
		return b.create()
	}
	mac, err := netlinkx.MACFrom(vx.HardwareAddr)
	if err != nil {
		return nil, fmt.Errorf("vxlan: %s: %w", b.name, err)
	}
	switch {
	case b.mac.IsZero():
		b.mac = mac
	case mac != b.mac:
		// Changed by hand: the published VtepMAC wins.
		if err := b.h.LinkSetHardwareAddr(l, b.mac); err != nil {
			return nil, fmt.Errorf("vxlan: %w", err)
		}
	}
	if l.Attrs().MTU != b.mtu {
		if err := b.h.LinkSetMTU(l, b.mtu); err != nil {
			return nil, fmt.Errorf("vxlan: %w", err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := b.h.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("vxlan: %w", err)
		}
	}
	if b.link != 0 && b.link != l.Attrs().Index {
		b.synced = false // entries hang off the old ifindex
	}
	b.link = l.Attrs().Index
	return l, nil
}

// mismatch names the first setting in which vx differs from the config
// (one that cannot be changed in place), or returns "".
func (b *Backend) mismatch(vx *netlinkx.Vxlan) string {
	cfg := b.p.Network.Backend
	src, _ := netip.AddrFromSlice(vx.SrcAddr)
	switch {
	case vx.VxlanId != b.vni:
		return fmt.Sprintf("VNI %d, want %d", vx.VxlanId, b.vni)
	case vx.Port != b.port:
		return fmt.Sprintf("port %d, want %d", vx.Port, b.port)
	case src.Unmap() != b.p.Ext.Addr:
		return fmt.Sprintf("local %v, want %s", vx.SrcAddr, b.p.Ext.Addr)
	case vx.VtepDevIndex != b.p.Ext.Index:
		return fmt.Sprintf("underlay #%d, want %s (#%d)", vx.VtepDevIndex, b.p.Ext.Name, b.p.Ext.Index)
	case vx.Learning != cfg.Learning:
		return fmt.Sprintf("learning %v, want %v", vx.Learning, cfg.Learning)
	case vx.GBP != cfg.GBP:
		return fmt.Sprintf("gbp %v, want %v", vx.GBP, cfg.GBP)
	}
	return ""
}

// create is `ip link add flannel.N address MAC mtu M type vxlan id N local
// ADDR dev UNDERLAY dstport PORT nolearning [gbp]` followed by `up`.
func (b *Backend) create() (netlinkx.Link, error) {
	if b.mac.IsZero() {
		// Chosen here rather than by the kernel so that udev's MAC policy
		// cannot change it after the fact, and so that it can be restored.
		if _, err := rand.Read(b.mac[:]); err != nil {
			return nil, fmt.Errorf("vxlan: random MAC: %w", err)
		}
		b.mac[0] = b.mac[0]&^1 | 2 // unicast, locally administered
	}
	cfg := b.p.Network.Backend
	la := netlinkx.NewLinkAttrs()
	la.Name, la.MTU, la.HardwareAddr = b.name, b.mtu, b.mac.HardwareAddr()
	vx := &netlinkx.Vxlan{
		LinkAttrs:    la,
		VxlanId:      b.vni,
		VtepDevIndex: b.p.Ext.Index,
		SrcAddr:      b.p.Ext.Addr.AsSlice(),
		Port:         b.port,
		Learning:     cfg.Learning,
		GBP:          cfg.GBP,
	}
	if err := b.h.LinkAdd(vx); err != nil {
		return nil, fmt.Errorf("vxlan: %w", err)
	}
	l, err := b.h.LinkByName(b.name)
	if err != nil {
		return nil, fmt.Errorf("vxlan: %w", err)
	}
	if err := b.h.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("vxlan: %w", err)
	}
	b.log.Info("created device", "mac", b.mac, "mtu", b.mtu, "vni", b.vni, "port", b.port, "local", b.p.Ext.Addr, "underlay", b.p.Ext.Name)
	b.synced, b.link = false, l.Attrs().Index
	return l, nil
}

// address leaves exactly <subnet network address>/32 on the device.
func (b *Backend) address(l netlinkx.Link, subnet netip.Prefix) error {
	want := netip.PrefixFrom(lease.SubnetIP(subnet), 32)
	have, err := b.h.AddrList(l, netlinkx.FamilyV4)
	if err != nil {
		return fmt.Errorf("vxlan: %w", err)
	}
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

// Devices implements backend.Devicer.
func (b *Backend) Devices() []string { return []string{b.name} }
