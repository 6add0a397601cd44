package wireguard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

var (
	_ backend.Backend         = (*Backend)(nil)
	_ backend.V6Backend       = (*Backend)(nil)
	_ backend.MetricsExporter = (*Backend)(nil)
	_ backend.Identifier      = (*Backend)(nil)
	_ backend.Devicer         = (*Backend)(nil)
)

// Options are the backend's settings that do not come from the network
// config.
type Options struct {
	// KeyFile holds the node's private key: $WIREGUARD_KEY_FILE, else
	// DefaultKeyFile.
	KeyFile string
	// OnUserspace, if set, is called before wireguard-go starts (each
	// time): weftd limits GOMAXPROCS then, which only matters when Go
	// moves the packets.
	OnUserspace func()
}

// Backend is the wireguard datapath of this node: the mode's devices
// (flannel-wg, flannel-wg-v6), each converged by the same code. It makes
// them in the network namespace of its handle and, for the userspace
// device, of the calling thread: weftd runs wholly inside the node's
// namespace.
type Backend struct {
	p    backend.Params
	h    *netlinkx.Handle
	log  *slog.Logger
	set  settings
	opts Options

	key  wgtypes.Key
	impl string // kernel or userspace, once a device was made: the next one is the same
	wg   *wgctrl.Client
	devs []*wgDev

	mu   sync.Mutex // guards the metrics' view of impl and their client
	mwg  *wgctrl.Client
	mimp string
}

// wgDev is the state of one device.
type wgDev struct {
	Device
	log   *slog.Logger
	impl  string      // kernel or userspace, once the device exists
	user  *userDevice // wireguard-go, when impl is userspace
	own   lease.Lease // the lease its address was set for
	skips backend.SkipLog
	hs    handshakes
	drops userDrops
}

// New returns the backend; it touches nothing until LeaseAttrs.
func New(p backend.Params, h *netlinkx.Handle, log *slog.Logger, o Options) (*Backend, error) {
	s, err := deriveSettings(p)
	if err != nil {
		return nil, err
	}
	if o.KeyFile == "" {
		o.KeyFile = DefaultKeyFile
	}
	log = log.With("backend", config.BackendWireGuard)
	b := &Backend{p: p, h: h, log: log, set: s, opts: o}
	for _, d := range s.devices {
		b.devs = append(b.devs, &wgDev{Device: d, log: log.With("device", d.Name)})
	}
	if q := s.portQuirk(); q != "" {
		log.Warn(q)
	}
	return b, nil
}

// LeaseAttrs loads (or makes) the private key, brings the devices up with
// it and returns "wireguard" with {"PublicKey":"…","Port":<ListenPort>}
// (none without IPv4, as flannel); LeaseV6Data has the IPv6 blob. A
// device of another mode left from an earlier run is removed: its route
// to a network would compete with this mode's.
func (b *Backend) LeaseAttrs(ctx context.Context) (string, json.RawMessage, error) {
	k, created, err := LoadKey(b.opts.KeyFile)
	if err != nil {
		return "", nil, err
	}
	b.key = k
	if created {
		b.log.Info("generated a new WireGuard key", "key_file", b.opts.KeyFile, "public_key", k.PublicKey())
	}
	for _, name := range []string{DeviceName, DeviceNameV6} {
		if slices.ContainsFunc(b.devs, func(d *wgDev) bool { return d.Name == name }) {
			continue
		}
		l, err := b.h.LinkByName(name)
		if err != nil {
			if netlinkx.IsNotFound(err) {
				continue
			}
			return "", nil, fmt.Errorf("wireguard: %w", err)
		}
		b.log.Info("removing a device this mode does not use", "device", name, "mode", b.set.mode)
		if err := b.h.LinkDel(l); err != nil {
			return "", nil, fmt.Errorf("wireguard: remove %s: %w", name, err)
		}
	}
	for _, d := range b.devs {
		if err := b.ensure(ctx, d, true); err != nil {
			return "", nil, err
		}
	}
	if !b.set.v4 {
		return config.BackendWireGuard, nil, nil
	}
	data, err := LeaseData{PublicKey: k.PublicKey().String(), Port: uint16(b.set.port)}.Marshal()
	if err != nil {
		return "", nil, fmt.Errorf("wireguard: %w", err)
	}
	return config.BackendWireGuard, data, nil
}

// LeaseV6Data implements backend.V6Backend: {"PublicKey":"…","Port":
// <ListenPortV6>} with the one key of both devices, after LeaseAttrs; nil
// without IPv6. The Port is ListenPortV6 in every mode, as flannel
// publishes it.
func (b *Backend) LeaseV6Data() json.RawMessage {
	if !b.set.v6 || b.key == (wgtypes.Key{}) {
		return nil
	}
	data, _ := LeaseData{PublicKey: b.key.PublicKey().String(), Port: uint16(b.set.port6)}.Marshal() // two plain fields
	return data
}

// Configure gives each device own's addresses of its families and the
// routes to their networks.
func (b *Backend) Configure(ctx context.Context, own lease.Lease) (backend.PodLink, error) {
	if err := b.checkOwn(own); err != nil {
		return backend.PodLink{}, err
	}
	var errs []error
	for _, d := range b.devs {
		d.own = own
		errs = append(errs, b.ensure(ctx, d, true))
	}
	if err := errors.Join(errs...); err != nil {
		return backend.PodLink{}, err
	}
	return backend.PodLink{MTU: b.set.mtu}, nil
}

// checkOwn says which family the network has that own lacks a subnet of.
func (b *Backend) checkOwn(own lease.Lease) error {
	switch {
	case b.set.v4 && !own.Subnet.Addr().Is4():
		return fmt.Errorf("wireguard: lease %s has no IPv4 subnet", own.Key())
	case b.set.v6 && !own.IPv6Subnet.Addr().Is6():
		return fmt.Errorf("wireguard: lease %s has no IPv6 subnet", own.Key())
	}
	return nil
}

// Reconcile re-creates a device that vanished (or whose wireguard-go
// stopped), repairs its link state when full, and converges its peers to
// the lease set; each device in turn, one failing not stopping the other.
// The peers are always compared with the device's own list: one query,
// cheap, and it heals a `wg set` done by hand.
func (b *Backend) Reconcile(ctx context.Context, own lease.Lease, leases []lease.Lease, full bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := b.checkOwn(own); err != nil {
		return err
	}
	var errs []error
	for _, d := range b.devs {
		if err := ctx.Err(); err != nil {
			return err
		}
		errs = append(errs, b.reconcile(ctx, d, own, leases, full))
	}
	return errors.Join(errs...)
}

func (b *Backend) reconcile(ctx context.Context, d *wgDev, own lease.Lease, leases []lease.Lease, full bool) error {
	check := full || own.Subnet != d.own.Subnet || own.IPv6Subnet != d.own.IPv6Subnet
	d.own = own
	if err := b.ensure(ctx, d, check); err != nil {
		return err
	}
	want, skipped := Desired(b.params(d, own), leases)
	d.skips.Report(d.log, skipped)

	dev, err := b.wg.Device(d.Name)
	if err != nil {
		return fmt.Errorf("wireguard: read %s: %w", d.Name, err)
	}
	cfg := b.deviceConfig(d, dev)
	cfg.Peers = Change(dev.Peers, want, time.Duration(b.set.keepalive)*time.Second, b.set.psk)
	if len(cfg.Peers) == 0 && cfg.PrivateKey == nil && cfg.ListenPort == nil {
		return nil
	}
	if err := b.wg.ConfigureDevice(d.Name, cfg); err != nil {
		return fmt.Errorf("wireguard: configure %s: %w", d.Name, err)
	}
	var set []wgtypes.Key
	removed := 0
	for _, p := range cfg.Peers {
		if p.Remove {
			removed++
		} else {
			set = append(set, p.PublicKey)
		}
	}
	if d.user != nil {
		// New to this device, or changed: handshake now rather than on
		// the first packet or the other end's rekey timeout. (The
		// kernel's device keeps its sessions across weftd restarts; it
		// has no such call.)
		d.user.kick(b.key.PublicKey(), set)
	}
	d.log.Debug("reconciled peers", "set", len(set), "removed", removed, "peers", len(want), "full", full)
	return nil
}

// params is what Desired plans d's peers from.
func (b *Backend) params(d *wgDev, own lease.Lease) Params {
	return Params{
		Mode: b.set.mode, Device: d.Device,
		Network: b.p.Network.Network, Network6: b.p.Network.IPv6Network,
		Own: own.Subnet, Own6: own.IPv6Subnet, OwnKey: b.key.PublicKey(),
		PublicIP: b.p.PublicIP(own), PublicIPv6: b.p.PublicIPv6(own),
	}
}

// Close stops wireguard-go (the userspace devices) and the wgctrl
// clients. The devices, their addresses and routes stay: the kernel's keep
// carrying traffic across a restart; the userspace ones hold pods' packets
// (they are dropped, never sent in clear) until weftd is back.
func (b *Backend) Close() error {
	var errs []error
	for _, d := range b.devs {
		if d.user != nil {
			d.user.Close()
			d.user = nil
		}
	}
	if b.wg != nil {
		errs = append(errs, b.wg.Close())
		b.wg = nil
	}
	b.mu.Lock()
	if b.mwg != nil {
		errs = append(errs, b.mwg.Close())
		b.mwg = nil
	}
	b.mu.Unlock()
	return errors.Join(errs...)
}

// Implementation is "kernel" or "userspace" once a device exists.
func (b *Backend) Implementation() string { return b.impl }

// MTU is the devices' and pods' MTU.
func (b *Backend) MTU() int { return b.set.mtu }

// PublicKey is this node's, once LeaseAttrs loaded the key.
func (b *Backend) PublicKey() wgtypes.Key { return b.key.PublicKey() }

// ensure makes sure d exists and runs, configured with our key and its
// port; with check it also repairs its MTU, state, addresses and routes.
func (b *Backend) ensure(ctx context.Context, d *wgDev, check bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.user != nil && d.user.stopped() {
		d.log.Warn("wireguard-go stopped (was the device deleted?), starting it again")
		d.user.Close()
		d.user = nil
		check = true
	}
	l, err := b.h.LinkByName(d.Name)
	if err != nil && !netlinkx.IsNotFound(err) {
		return fmt.Errorf("wireguard: %w", err)
	}
	if l == nil && d.impl != "" {
		d.log.Warn("device vanished, re-creating it")
		if d.user != nil {
			d.user.Close()
			d.user = nil
		}
	}
	if l != nil && (d.impl == "" || d.user == nil && d.impl == ImplUserspace) {
		// A device left by a previous run: keep a kernel device as it is
		// (traffic keeps flowing), attach to a TUN again; replace one
		// of the other kind when the config forces it.
		kind := ImplUserspace
		if l.Type() == "wireguard" {
			kind = ImplKernel
		} else if l.Type() != "tuntap" {
			kind = ""
		}
		if kind == "" || b.set.impl != config.WireGuardImplAuto && b.set.impl != kind {
			d.log.Info("replacing existing device", "type", l.Type(), "want", b.set.impl)
			if err := b.h.LinkDel(l); err != nil {
				return fmt.Errorf("wireguard: %w", err)
			}
			l = nil
		} else {
			d.impl = kind // a TUN is attached to below
			b.setImpl(kind)
		}
	}
	if l == nil || d.impl == ImplUserspace && d.user == nil {
		if err := b.create(d); err != nil {
			return err
		}
		check = true
		if l, err = b.h.LinkByName(d.Name); err != nil {
			return fmt.Errorf("wireguard: %w", err)
		}
	}
	if b.wg == nil {
		// After the device: creating a kernel device loads the module,
		// and the client looks for the kernel's family when made.
		if b.wg, err = wgctrl.New(); err != nil {
			return fmt.Errorf("wireguard: wgctrl: %w", err)
		}
	}
	if !check {
		return nil
	}
	// Only what differs: setting listen_port makes wireguard-go close and
	// reopen its sockets, dropping what is in flight (and the reopen has
	// been seen to fail with EADDRINUSE, leaving it without a socket until
	// the next try).
	dev, err := b.wg.Device(d.Name)
	if err != nil {
		return fmt.Errorf("wireguard: read %s: %w", d.Name, err)
	}
	if cfg := b.deviceConfig(d, dev); cfg.PrivateKey != nil || cfg.ListenPort != nil {
		if err := b.wg.ConfigureDevice(d.Name, cfg); err != nil {
			return fmt.Errorf("wireguard: configure %s: %w", d.Name, err)
		}
	}
	return b.configureLink(d, l)
}

// deviceConfig sets our key and d's port where dev's differ, each alone:
// a listen_port, even an unchanged one, makes wireguard-go reopen its
// sockets.
func (b *Backend) deviceConfig(d *wgDev, dev *wgtypes.Device) wgtypes.Config {
	var cfg wgtypes.Config
	if dev.PrivateKey != b.key {
		cfg.PrivateKey = &b.key
	}
	if dev.ListenPort != d.Port {
		port := d.Port
		cfg.ListenPort = &port
	}
	return cfg
}

// create makes d: the kernel's unless forced to userspace or the kernel
// has none, else wireguard-go's.
func (b *Backend) create(d *wgDev) error {
	if b.set.impl != config.WireGuardImplUserspace && b.impl != ImplUserspace {
		err := createKernel(b.h, d.Name, b.set.mtu)
		switch {
		case err == nil:
			d.impl = ImplKernel
			b.setImpl(ImplKernel)
			d.log.Info("using the kernel's WireGuard", "mtu", b.set.mtu, "port", d.Port)
			return nil
		case !errors.Is(err, errNoKernel) || b.set.impl == config.WireGuardImplKernel:
			return fmt.Errorf("wireguard: create %s: %w", d.Name, err)
		}
		d.log.Info("no WireGuard in the kernel, using wireguard-go in weftd: pods lose their path to other nodes while weftd is down", "reason", err)
	}
	if b.opts.OnUserspace != nil {
		b.opts.OnUserspace()
	}
	u, err := startUserspace(d.Name, b.set.mtu, d.log, &d.drops)
	if err != nil {
		return fmt.Errorf("wireguard: userspace device %s: %w", d.Name, err)
	}
	d.user = u
	if d.impl != ImplUserspace {
		d.log.Info("using userspace WireGuard (wireguard-go)", "mtu", b.set.mtu, "port", d.Port, "batch", u.dev.BatchSize())
	}
	d.impl = ImplUserspace
	b.setImpl(ImplUserspace)
	return nil
}

func (b *Backend) setImpl(impl string) {
	b.mu.Lock()
	b.impl, b.mimp = impl, impl
	b.mu.Unlock()
}

// family is one address family as a device carries it, or not.
type family struct {
	v6      bool
	carried bool
	network netip.Prefix // the cluster network of the family
	subnet  netip.Prefix // own's subnet of the family
}

func (b *Backend) families(d *wgDev) []family {
	return []family{
		{carried: d.IPv4, network: b.p.Network.Network, subnet: d.own.Subnet},
		{v6: true, carried: d.IPv6, network: b.p.Network.IPv6Network, subnet: d.own.IPv6Subnet},
	}
}

// configureLink converges d's link: up, our MTU, and per family it
// carries the one address <subnet IP>/32 (/128) and the route to the
// network, as flannel sets them; of a family it does not carry (left by
// another mode), none.
//
//	ip link set flannel-wg mtu MTU up
//	ip addr replace 10.244.1.0/32 dev flannel-wg
//	ip route replace 10.244.0.0/16 dev flannel-wg scope link
//	ip addr replace fd00:10:244:1::/128 dev flannel-wg-v6
//	ip -6 route replace fd00:10:244::/56 dev flannel-wg-v6
func (b *Backend) configureLink(d *wgDev, l netlinkx.Link) error {
	if l.Attrs().MTU != b.set.mtu {
		if err := b.h.LinkSetMTU(l, b.set.mtu); err != nil {
			return fmt.Errorf("wireguard: %w", err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := b.h.LinkSetUp(l); err != nil {
			return fmt.Errorf("wireguard: %w", err)
		}
	}
	for _, f := range b.families(d) {
		if f.carried && !f.subnet.IsValid() {
			continue // before Configure: no lease yet
		}
		if err := b.address(d, l, f); err != nil {
			return err
		}
		if err := b.route(l, f); err != nil {
			return err
		}
	}
	return nil
}

// address leaves on l exactly f's address, if f is carried (besides IPv6
// link-local addresses, which the kernel keeps).
func (b *Backend) address(d *wgDev, l netlinkx.Link, f family) error {
	fam := netlinkx.FamilyV4
	if f.v6 {
		fam = netlinkx.FamilyV6
	}
	var want netip.Prefix
	if f.carried {
		want = netip.PrefixFrom(lease.SubnetIP(f.subnet), f.subnet.Addr().BitLen())
	}
	addrs, err := b.h.AddrList(l, fam)
	if err != nil {
		return fmt.Errorf("wireguard: %w", err)
	}
	have := false
	for _, a := range addrs {
		switch {
		case a == want:
			have = true
		case a.Addr().IsLinkLocalUnicast():
		default:
			d.log.Info("removing stale address", "addr", a)
			if err := b.h.AddrDel(l, a); err != nil {
				return fmt.Errorf("wireguard: %w", err)
			}
		}
	}
	if want.IsValid() && !have {
		if err := b.h.AddrReplace(l, want); err != nil {
			return fmt.Errorf("wireguard: %w", err)
		}
	}
	return nil
}

// route puts the route to f's network on l, if f is carried, or takes it
// off.
func (b *Backend) route(l netlinkx.Link, f family) error {
	if !f.network.IsValid() {
		return nil
	}
	fam := netlinkx.FamilyV4
	if f.v6 {
		fam = netlinkx.FamilyV6
	}
	route := netlinkx.Route{Dst: f.network.Masked(), LinkIndex: l.Attrs().Index}
	routes, err := b.h.RouteList(netlinkx.RouteFilter{Family: fam, LinkIndex: l.Attrs().Index})
	if err != nil {
		return fmt.Errorf("wireguard: %w", err)
	}
	for _, r := range routes {
		if r.Dst != route.Dst || r.Gw.IsValid() || r.Priority != 0 {
			continue
		}
		if f.carried {
			return nil
		}
		if err := b.h.RouteDel(r); err != nil {
			return fmt.Errorf("wireguard: %w", err)
		}
	}
	if !f.carried {
		return nil
	}
	if err := b.h.RouteReplace(route); err != nil {
		return fmt.Errorf("wireguard: %w", err)
	}
	return nil
}

// Stats reads the devices' state. Safe to call from any goroutine: it has
// a wgctrl client of its own.
func (b *Backend) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := Stats{Implementation: b.mimp}
	if s.Implementation == "" {
		return s
	}
	if b.mwg == nil {
		if c, err := wgctrl.New(); err == nil {
			b.mwg = c
		}
	}
	for _, d := range b.devs {
		s.Devices = append(s.Devices, b.deviceStats(d, s.Implementation))
	}
	return s
}

func (b *Backend) deviceStats(d *wgDev, impl string) DeviceStats {
	s := DeviceStats{Name: d.Name, Dropped: map[string]uint64{}}
	if impl == ImplUserspace {
		d.drops.into(s.Dropped)
	}
	if l, err := b.h.LinkByName(d.Name); err == nil && l.Attrs().Statistics != nil {
		s.Dropped["link_rx"] = l.Attrs().Statistics.RxDropped
		s.Dropped["link_tx"] = l.Attrs().Statistics.TxDropped
	}
	if b.mwg == nil {
		return s
	}
	dev, err := b.mwg.Device(d.Name)
	if err != nil {
		return s
	}
	s.Peers = len(dev.Peers)
	for _, p := range dev.Peers {
		s.RxBytes += uint64(p.ReceiveBytes)
		s.TxBytes += uint64(p.TransmitBytes)
	}
	s.Handshakes, s.RecentHandshakes = d.hs.observe(dev.Peers, time.Now())
	return s
}

// Collectors implements backend.MetricsExporter (weft_wireguard_*).
func (b *Backend) Collectors() []prometheus.Collector {
	return []prometheus.Collector{newCollector(b.Stats)}
}

// Identities implements backend.Identifier: the lease's public key.
func (b *Backend) Identities(l lease.Lease) []string { return Identities(l) }

// Devices implements backend.Devicer: the mode's devices.
func (b *Backend) Devices() []string {
	names := make([]string, len(b.devs))
	for i, d := range b.devs {
		names[i] = d.Name
	}
	return names
}
