package wireguard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
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
	_ backend.MetricsExporter = (*Backend)(nil)
	_ backend.Identifier      = (*Backend)(nil)
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

// Backend is the wireguard datapath of this node. It makes flannel-wg in
// the network namespace of its handle and, for the userspace device, of
// the calling thread: weftd runs wholly inside the node's namespace.
type Backend struct {
	p    backend.Params
	h    *netlinkx.Handle
	log  *slog.Logger
	set  settings
	opts Options

	key  wgtypes.Key
	impl string      // kernel or userspace, once the device exists
	user *userDevice // the userspace device, when impl is userspace
	wg   *wgctrl.Client
	own  netip.Prefix

	skips backend.SkipLog
	hs    handshakes
	drops userDrops

	mu   sync.Mutex // guards the metrics' view of impl and their client
	mwg  *wgctrl.Client
	mimp string
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
	return &Backend{p: p, h: h, log: log.With("backend", config.BackendWireGuard, "device", DeviceName), set: s, opts: o}, nil
}

// LeaseAttrs loads (or makes) the private key, brings the device up with
// it and returns "wireguard" with {"PublicKey":"…","Port":<ListenPort>}.
func (b *Backend) LeaseAttrs(ctx context.Context) (string, json.RawMessage, error) {
	k, created, err := LoadKey(b.opts.KeyFile)
	if err != nil {
		return "", nil, err
	}
	b.key = k
	if created {
		b.log.Info("generated a new WireGuard key", "key_file", b.opts.KeyFile, "public_key", k.PublicKey())
	}
	if err := b.ensure(ctx, true); err != nil {
		return "", nil, err
	}
	data, err := LeaseData{PublicKey: k.PublicKey().String(), Port: uint16(b.set.port)}.Marshal()
	if err != nil {
		return "", nil, fmt.Errorf("wireguard: %w", err)
	}
	return config.BackendWireGuard, data, nil
}

// Configure gives flannel-wg own's address and the route to the network.
func (b *Backend) Configure(ctx context.Context, own lease.Lease) (backend.PodLink, error) {
	if !own.Subnet.IsValid() || !own.Subnet.Addr().Is4() {
		return backend.PodLink{}, fmt.Errorf("wireguard: lease %s has no IPv4 subnet", own.Key())
	}
	b.own = own.Subnet
	if err := b.ensure(ctx, true); err != nil {
		return backend.PodLink{}, err
	}
	return backend.PodLink{MTU: b.set.mtu}, nil
}

// Reconcile re-creates the device if it vanished (or wireguard-go
// stopped), repairs its link state when full, and converges its peers to
// the lease set. The peers are always compared with the device's own
// list: one query, cheap, and it heals a `wg set` done by hand.
func (b *Backend) Reconcile(ctx context.Context, own lease.Lease, leases []lease.Lease, full bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !own.Subnet.IsValid() || !own.Subnet.Addr().Is4() {
		return fmt.Errorf("wireguard: lease %s has no IPv4 subnet", own.Key())
	}
	check := full || own.Subnet != b.own
	b.own = own.Subnet
	if err := b.ensure(ctx, check); err != nil {
		return err
	}
	want, skipped := Desired(Params{
		Network: b.p.Network.Network, Own: own.Subnet, OwnKey: b.key.PublicKey(),
		PublicIP: b.p.PublicIP(own), Port: b.set.port,
	}, leases)
	b.skips.Report(b.log, skipped)

	dev, err := b.wg.Device(DeviceName)
	if err != nil {
		return fmt.Errorf("wireguard: read %s: %w", DeviceName, err)
	}
	cfg := b.deviceConfig(dev)
	cfg.Peers = Change(dev.Peers, want, time.Duration(b.set.keepalive)*time.Second, b.set.psk)
	if len(cfg.Peers) == 0 && cfg.PrivateKey == nil && cfg.ListenPort == nil {
		return nil
	}
	if err := b.wg.ConfigureDevice(DeviceName, cfg); err != nil {
		return fmt.Errorf("wireguard: configure %s: %w", DeviceName, err)
	}
	added, removed := 0, 0
	for _, p := range cfg.Peers {
		if p.Remove {
			removed++
		} else {
			added++
		}
	}
	b.log.Debug("reconciled peers", "set", added, "removed", removed, "peers", len(want), "full", full)
	return nil
}

// Close stops wireguard-go (the userspace device) and the wgctrl clients.
// The device, its address and route stay: the kernel's keeps carrying
// traffic across a restart; the userspace one holds pods' packets (they
// are dropped, never sent in clear) until weftd is back.
func (b *Backend) Close() error {
	var errs []error
	if b.user != nil {
		b.user.Close()
		b.user = nil
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

// Implementation is "kernel" or "userspace" once the device exists.
func (b *Backend) Implementation() string { return b.impl }

// MTU is the device's and pods' MTU.
func (b *Backend) MTU() int { return b.set.mtu }

// PublicKey is this node's, once LeaseAttrs loaded the key.
func (b *Backend) PublicKey() wgtypes.Key { return b.key.PublicKey() }

// ensure makes sure flannel-wg exists and runs, configured with our key
// and port; with check it also repairs its MTU, state, address and route.
func (b *Backend) ensure(ctx context.Context, check bool) error {
	if b.user != nil && b.user.stopped() {
		b.log.Warn("wireguard-go stopped (was flannel-wg deleted?), starting it again")
		b.user.Close()
		b.user = nil
		check = true
	}
	l, err := b.h.LinkByName(DeviceName)
	if err != nil && !netlinkx.IsNotFound(err) {
		return fmt.Errorf("wireguard: %w", err)
	}
	if l == nil && b.impl != "" {
		b.log.Warn("flannel-wg vanished, re-creating it")
		if b.user != nil {
			b.user.Close()
			b.user = nil
		}
	}
	if l != nil && (b.impl == "" || b.user == nil && b.impl == ImplUserspace) {
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
			b.log.Info("replacing existing device", "type", l.Type(), "want", b.set.impl)
			if err := b.h.LinkDel(l); err != nil {
				return fmt.Errorf("wireguard: %w", err)
			}
			l = nil
		} else {
			b.setImpl(kind) // a TUN is attached to below
		}
	}
	if l == nil || b.impl == ImplUserspace && b.user == nil {
		if err := b.create(); err != nil {
			return err
		}
		check = true
		if l, err = b.h.LinkByName(DeviceName); err != nil {
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
	dev, err := b.wg.Device(DeviceName)
	if err != nil {
		return fmt.Errorf("wireguard: read %s: %w", DeviceName, err)
	}
	if cfg := b.deviceConfig(dev); cfg.PrivateKey != nil || cfg.ListenPort != nil {
		if err := b.wg.ConfigureDevice(DeviceName, cfg); err != nil {
			return fmt.Errorf("wireguard: configure %s: %w", DeviceName, err)
		}
	}
	return b.configureLink(l)
}

// deviceConfig sets our key and port where dev's differ, each alone: a
// listen_port, even an unchanged one, makes wireguard-go reopen its
// sockets.
func (b *Backend) deviceConfig(dev *wgtypes.Device) wgtypes.Config {
	var cfg wgtypes.Config
	if dev.PrivateKey != b.key {
		cfg.PrivateKey = &b.key
	}
	if dev.ListenPort != b.set.port {
		cfg.ListenPort = &b.set.port
	}
	return cfg
}

// create makes the device: the kernel's unless forced to userspace or the
// kernel has none, else wireguard-go's.
func (b *Backend) create() error {
	if b.set.impl != config.WireGuardImplUserspace && b.impl != ImplUserspace {
		err := createKernel(b.h, DeviceName, b.set.mtu)
		switch {
		case err == nil:
			b.setImpl(ImplKernel)
			b.log.Info("using the kernel's WireGuard", "mtu", b.set.mtu, "port", b.set.port)
			return nil
		case !errors.Is(err, errNoKernel) || b.set.impl == config.WireGuardImplKernel:
			return fmt.Errorf("wireguard: create %s: %w", DeviceName, err)
		}
		b.log.Info("no WireGuard in the kernel, using wireguard-go in weftd: pods lose their path to other nodes while weftd is down", "reason", err)
	}
	if b.opts.OnUserspace != nil {
		b.opts.OnUserspace()
	}
	u, err := startUserspace(DeviceName, b.set.mtu, b.log, &b.drops)
	if err != nil {
		return fmt.Errorf("wireguard: userspace device: %w", err)
	}
	b.user = u
	if b.impl != ImplUserspace {
		b.log.Info("using userspace WireGuard (wireguard-go)", "mtu", b.set.mtu, "port", b.set.port, "batch", u.dev.BatchSize())
	}
	b.setImpl(ImplUserspace)
	return nil
}

func (b *Backend) setImpl(impl string) {
	b.mu.Lock()
	b.impl, b.mimp = impl, impl
	b.mu.Unlock()
}

// configureLink converges flannel-wg: up, our MTU, the one address
// <subnet IP>/32 and the route to the network, as flannel sets them.
//
//	ip link set flannel-wg mtu MTU up
//	ip addr replace 10.244.1.0/32 dev flannel-wg
//	ip route replace 10.244.0.0/16 dev flannel-wg scope link
func (b *Backend) configureLink(l netlinkx.Link) error {
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
	if !b.own.IsValid() {
		return nil // before Configure: no lease yet
	}
	want := netip.PrefixFrom(lease.SubnetIP(b.own), 32)
	addrs, err := b.h.AddrList(l, netlinkx.FamilyV4)
	if err != nil {
		return fmt.Errorf("wireguard: %w", err)
	}
	have := false
	for _, a := range addrs {
		if a == want {
			have = true
			continue
		}
		b.log.Info("removing stale address", "addr", a)
		if err := b.h.AddrDel(l, a); err != nil {
			return fmt.Errorf("wireguard: %w", err)
		}
	}
	if !have {
		if err := b.h.AddrReplace(l, want); err != nil {
			return fmt.Errorf("wireguard: %w", err)
		}
	}
	route := netlinkx.Route{Dst: b.p.Network.Network.Masked(), LinkIndex: l.Attrs().Index}
	routes, err := b.h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4, LinkIndex: l.Attrs().Index})
	if err != nil {
		return fmt.Errorf("wireguard: %w", err)
	}
	for _, r := range routes {
		if r.Dst == route.Dst && !r.Gw.IsValid() && r.Priority == 0 {
			return nil
		}
	}
	if err := b.h.RouteReplace(route); err != nil {
		return fmt.Errorf("wireguard: %w", err)
	}
	return nil
}

// Stats reads the device's state. Safe to call from any goroutine: it has
// a wgctrl client of its own.
func (b *Backend) Stats() Stats {
	s := Stats{Dropped: map[string]uint64{}}
	b.mu.Lock()
	defer b.mu.Unlock()
	s.Implementation = b.mimp
	if s.Implementation == "" {
		return s
	}
	if s.Implementation == ImplUserspace {
		b.drops.into(s.Dropped)
	}
	if l, err := b.h.LinkByName(DeviceName); err == nil && l.Attrs().Statistics != nil {
		s.Dropped["link_rx"] = l.Attrs().Statistics.RxDropped
		s.Dropped["link_tx"] = l.Attrs().Statistics.TxDropped
	}
	if b.mwg == nil {
		c, err := wgctrl.New()
		if err != nil {
			return s
		}
		b.mwg = c
	}
	dev, err := b.mwg.Device(DeviceName)
	if err != nil {
		return s
	}
	s.Peers = len(dev.Peers)
	for _, p := range dev.Peers {
		s.RxBytes += uint64(p.ReceiveBytes)
		s.TxBytes += uint64(p.TransmitBytes)
	}
	s.Handshakes, s.RecentHandshakes = b.hs.observe(dev.Peers, time.Now())
	return s
}

// Collectors implements backend.MetricsExporter (weft_wireguard_*).
func (b *Backend) Collectors() []prometheus.Collector {
	return []prometheus.Collector{newCollector(b.Stats)}
}

// Identities implements backend.Identifier: the lease's public key.
func (b *Backend) Identities(l lease.Lease) []string { return Identities(l) }

// Devices implements backend.Devicer.
func (b *Backend) Devices() []string { return []string{DeviceName} }
