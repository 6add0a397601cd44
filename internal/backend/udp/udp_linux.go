package udp

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

var (
	_ backend.Backend         = (*Backend)(nil)
	_ backend.MetricsExporter = (*Backend)(nil)
)

// Backend is the udp datapath of this node. It opens flannel0 and the UDP
// socket in the network namespace of the thread that calls Configure (and
// Reconcile, should flannel0 have to be re-created): weftd runs wholly
// inside the node's namespace, so that is the node's.
type Backend struct {
	p   backend.Params
	h   *netlinkx.Handle
	log *slog.Logger
	set settings

	own    netip.Prefix
	leases []lease.Lease // as last reconciled
	table  atomic.Pointer[table]
	warned map[skipped]bool // leases left out of the table, already logged
	bind   conn.Bind        // the current datapath's; parses endpoints for tables
	dp     *datapath
	stats  counters
}

// New returns the backend; it touches nothing until Configure.
func New(p backend.Params, h *netlinkx.Handle, log *slog.Logger) (*Backend, error) {
	s, err := deriveSettings(p)
	if err != nil {
		return nil, err
	}
	b := &Backend{p: p, h: h, log: log.With("backend", "udp"), set: s}
	b.table.Store(&table{})
	return b, nil
}

// LeaseAttrs publishes nothing: flannel's udp backend sets no BackendType
// and no BackendData, and peers find each other by PublicIP alone.
func (b *Backend) LeaseAttrs(ctx context.Context) (string, json.RawMessage, error) {
	return "", nil, nil
}

// Configure creates flannel0 for own (address, MTU, route to the network),
// opens the socket and starts forwarding. It returns the pod MTU; pods keep
// the kernel's GSO limit, since a packet read from the TUN device must fit
// the datapath's 64 KiB buffers.
func (b *Backend) Configure(ctx context.Context, own lease.Lease) (backend.PodLink, error) {
	if !own.Subnet.IsValid() || !own.Subnet.Addr().Is4() {
		return backend.PodLink{}, fmt.Errorf("udp backend: lease %s has no IPv4 subnet", own.Key())
	}
	b.own = own.Subnet
	if err := b.ensure(true); err != nil {
		return backend.PodLink{}, err
	}
	b.swapTable()
	return backend.PodLink{MTU: b.set.mtu}, nil
}

// Reconcile re-creates flannel0 if it vanished, repairs its address, MTU,
// state and route when full, and swaps in the peer table for leases.
func (b *Backend) Reconcile(ctx context.Context, own lease.Lease, leases []lease.Lease, full bool) error {
	if !own.Subnet.IsValid() || !own.Subnet.Addr().Is4() {
		return fmt.Errorf("udp backend: lease %s has no IPv4 subnet", own.Key())
	}
	check := full || own.Subnet != b.own
	b.own = own.Subnet
	b.leases = slices.Clone(leases)
	if err := b.ensure(check); err != nil {
		return err
	}
	b.swapTable()
	return nil
}

// Close stops forwarding. flannel0 stays (it is persistent), with its
// address and route, so a restarted agent attaches to it again and traffic
// to pods elsewhere is held there meanwhile instead of leaking out by the
// default route.
func (b *Backend) Close() error {
	if b.dp == nil {
		return nil
	}
	err := b.dp.Close()
	b.dp = nil
	return err
}

// Stats returns the datapath's counters. Safe to call from any goroutine.
func (b *Backend) Stats() Stats {
	return b.stats.snapshot()
}

// Collectors implements backend.MetricsExporter: the datapath's counters
// (weft_udp_*), read from Stats at scrape time.
func (b *Backend) Collectors() []prometheus.Collector {
	return []prometheus.Collector{newCollector(b.Stats)}
}

// MTU is the pod MTU: flannel0's.
func (b *Backend) MTU() int { return b.set.mtu }

// swapTable builds the peer table for b.own and b.leases and publishes it
// to the datapath.
func (b *Backend) swapTable() {
	t, skip := buildTable(b.own, b.leases, b.set.port, func(a netip.AddrPort) (conn.Endpoint, error) {
		return b.bind.ParseEndpoint(a.String())
	})
	old := b.table.Swap(t)
	if !t.sameAs(old) {
		b.log.Debug("peer table changed", "subnet", t.own, "peers", len(t.peers), "skipped", len(skip))
	}
	// Warn once per lease and reason, not on every reconcile.
	warned := make(map[skipped]bool, len(skip))
	for _, s := range skip {
		if !b.warned[s] {
			b.log.Warn("lease not usable as udp peer", "lease", s.Key, "reason", s.Reason)
		}
		warned[s] = true
	}
	b.warned = warned
}

// ensure makes sure the datapath runs on a live flannel0. With check it
// also compares flannel0's state with what it should be and repairs it.
func (b *Backend) ensure(check bool) error {
	restart := b.dp != nil && b.dp.tunStopped()
	if b.dp != nil && check && !restart {
		if _, err := b.h.LinkByName(DeviceName); netlinkx.IsNotFound(err) {
			restart = true
		} else if err != nil {
			return fmt.Errorf("udp backend: %w", err)
		}
	}
	if restart {
		b.log.Warn("flannel0 vanished, re-creating it")
		if err := b.dp.Close(); err != nil {
			b.log.Debug("close stopped datapath", "err", err)
		}
		b.dp = nil
		b.stats.restarts.Add(1)
	}
	if b.dp == nil {
		if err := b.start(); err != nil {
			return err
		}
		check = true
	}
	if check {
		return b.configureLink()
	}
	return nil
}

// start opens flannel0 and the socket and starts the forwarding loops.
func (b *Backend) start() error {
	dev, err := openTUN(DeviceName)
	if err != nil {
		return fmt.Errorf("udp backend: open TUN %s: %w", DeviceName, err)
	}
	bind := conn.NewStdNetBind()
	dp, err := startDatapath(datapathConfig{
		TUN:   dev,
		Bind:  bind,
		Port:  b.set.port,
		MTU:   b.set.mtu,
		Table: &b.table,
		Stats: &b.stats,
		Log:   b.log,
	})
	if err != nil {
		dev.Close()
		return fmt.Errorf("udp backend: listen on UDP port %d: %w", b.set.port, err)
	}
	b.dp = dp
	b.bind = bind
	// The old table's endpoints belong to the old bind.
	b.swapTable()
	b.log.Info("udp datapath started", "device", DeviceName, "port", b.set.port, "mtu", b.set.mtu,
		"batch", dev.BatchSize())
	return nil
}

// openTUN is flannel0 (backend.OpenTUN) as wireguard-go's tun package
// drives it, unmonitored: configureLink sets its MTU and state. It outlives
// this process, see Close.
func openTUN(name string) (tun.Device, error) {
	fd, err := backend.OpenTUN(name)
	if err != nil {
		return nil, err
	}
	dev, _, err := tun.CreateUnmonitoredTUNFromFD(fd)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return dev, nil
}

// configureLink converges flannel0: up, our MTU, the one address
// <subnet IP>/32 and the one route <Network> dev flannel0.
//
//	ip link set flannel0 mtu MTU up
//	ip addr replace 10.244.1.0/32 dev flannel0
//	ip route replace 10.244.0.0/16 dev flannel0
func (b *Backend) configureLink() error {
	l, err := b.h.LinkByName(DeviceName)
	if err != nil {
		return fmt.Errorf("udp backend: %w", err)
	}
	if l.Attrs().MTU != b.set.mtu {
		if err := b.h.LinkSetMTU(l, b.set.mtu); err != nil {
			return fmt.Errorf("udp backend: %w", err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := b.h.LinkSetUp(l); err != nil {
			return fmt.Errorf("udp backend: %w", err)
		}
	}

	want := netip.PrefixFrom(lease.SubnetIP(b.own), 32)
	addrs, err := b.h.AddrList(l, netlinkx.FamilyV4)
	if err != nil {
		return fmt.Errorf("udp backend: %w", err)
	}
	have := false
	for _, a := range addrs {
		if a == want {
			have = true
			continue
		}
		// An address from an earlier lease of this node.
		b.log.Info("removing stale address", "device", DeviceName, "addr", a)
		if err := b.h.AddrDel(l, a); err != nil {
			return fmt.Errorf("udp backend: %w", err)
		}
	}
	if !have {
		if err := b.h.AddrReplace(l, want); err != nil {
			return fmt.Errorf("udp backend: %w", err)
		}
	}

	route := netlinkx.Route{Dst: b.p.Network.Network.Masked(), LinkIndex: l.Attrs().Index}
	routes, err := b.h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4, LinkIndex: l.Attrs().Index})
	if err != nil {
		return fmt.Errorf("udp backend: %w", err)
	}
	have = false
	for _, r := range routes {
		if r.Dst == route.Dst && !r.Gw.IsValid() && r.Priority == 0 {
			have = true
		}
	}
	if !have {
		if err := b.h.RouteReplace(route); err != nil {
			return fmt.Errorf("udp backend: %w", err)
		}
	}
	return nil
}

// Devices implements backend.Devicer.
func (b *Backend) Devices() []string { return []string{DeviceName} }
