package hostgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

// Backend is the host-gw datapath of one node, in the namespace of its handle.
type Backend struct {
	p   backend.Params
	h   *netlinkx.Handle
	log *slog.Logger
	mtu int

	// routes holds, by lease key, the routes the kernel was last converged
	// to: the base of an incremental reconcile and of Update, valid only
	// while synced. notAdjacent holds the leases refused for want of L2
	// adjacency.
	routes      map[string]netlinkx.Route
	notAdjacent map[string]bool
	synced      bool
	own         netip.Prefix
	skips       backend.SkipLog
}

var (
	_ backend.Backend = (*Backend)(nil)
	_ backend.Updater = (*Backend)(nil)
)

// New returns the host-gw backend for p, programming the namespace of h.
func New(p backend.Params, h *netlinkx.Handle, log *slog.Logger) (*Backend, error) {
	if p.Network == nil || !p.Network.Network.IsValid() {
		return nil, errors.New("host-gw: no IPv4 cluster network configured (IPv6-only is not supported by this backend)")
	}
	if p.Ext.Index <= 0 {
		return nil, fmt.Errorf("host-gw: underlay %q has no ifindex", p.Ext.Name)
	}
	mtu := p.Network.Backend.MTU
	if mtu == 0 {
		mtu = p.Ext.MTU
	}
	return &Backend{p: p, h: h, log: log.With("backend", config.BackendHostGW, "device", p.Ext.Name), mtu: mtu}, nil
}

// LeaseAttrs returns "host-gw" and no BackendData: the PublicIP is all a
// remote node needs.
func (b *Backend) LeaseAttrs(ctx context.Context) (string, json.RawMessage, error) {
	return config.BackendHostGW, nil, ctx.Err()
}

// Configure has nothing to set up: pods use the underlay's MTU and, since
// their packets leave by the underlay as they are, its GSO limit.
func (b *Backend) Configure(ctx context.Context, own lease.Lease) (backend.PodLink, error) {
	if !own.Subnet.IsValid() {
		return backend.PodLink{}, errors.New("host-gw: own lease has no IPv4 subnet")
	}
	return podLink(b.p.Ext, b.mtu), ctx.Err()
}

// Refused is how many remote leases are refused because their nodes are
// not on this node's L2 segment.
func (b *Backend) Refused() int { return len(b.notAdjacent) }

// Reconcile converges the underlay's routes inside the cluster network to
// the lease set: with full (or after a failure) against a dump of the
// kernel, otherwise against its previous call. Leases whose nodes are not
// adjacent are refused: logged with the reason when that changes and
// counted by Refused, not returned, since one misplaced node must not make
// every other node's datapath count as failed. Errors are the kernel's.
func (b *Backend) Reconcile(ctx context.Context, own lease.Lease, leases []lease.Lease, full bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !own.Subnet.IsValid() {
		return errors.New("host-gw: own lease has no IPv4 subnet")
	}
	p := b.params(own)
	routes := make(map[string]netlinkx.Route, len(leases))
	b.notAdjacent = map[string]bool{}
	var want []netlinkx.Route
	var skipped []*backend.LeaseError
	for _, l := range leases {
		r, ok, err := route(p, l)
		switch {
		case errors.Is(err, ErrNotAdjacent):
			b.notAdjacent[l.Key()] = true
			fallthrough
		case err != nil:
			skipped = append(skipped, &backend.LeaseError{Subnet: l.Subnet, Err: err})
		case ok:
			routes[l.Key()] = r
			want = append(want, r)
		}
	}
	b.skips.Report(b.log, skipped)

	incremental := !full && b.synced && own.Subnet == b.own
	var have []netlinkx.Route
	owned := func(netlinkx.Route) bool { return true }
	if incremental {
		have = slices.Collect(maps.Values(b.routes))
	} else {
		var err error
		if have, err = b.h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4, LinkIndex: p.Underlay}); err != nil {
			b.synced = false
			return fmt.Errorf("host-gw: %w", err)
		}
		owned = func(r netlinkx.Route) bool { return backend.Manages(p.Network, p.Own, r.Dst) }
	}
	b.routes, b.own = routes, own.Subnet
	n, err := b.apply(have, want, owned)
	b.synced = err == nil
	if n > 0 {
		lvl := slog.LevelDebug
		if !incremental {
			lvl = slog.LevelInfo // a full pass that changes things repaired something
		}
		b.log.Log(ctx, lvl, "reconciled routes", "changes", n, "routes", len(want), "full", !incremental)
	}
	return err
}

// Update implements backend.Updater: the routes of the leases in evs,
// and nothing else, against what the previous call left.
func (b *Backend) Update(ctx context.Context, own lease.Lease, evs []lease.Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !b.synced || own.Subnet != b.own {
		return backend.ErrStale
	}
	p := b.params(own)
	var have, want []netlinkx.Route
	for _, ev := range evs {
		key := ev.Lease.Key()
		if r, ok := b.routes[key]; ok {
			have = append(have, r)
			delete(b.routes, key)
		}
		delete(b.notAdjacent, key)
		if ev.Type == lease.Removed {
			b.skips.Set(b.log, &backend.LeaseError{Subnet: ev.Lease.Subnet})
			continue
		}
		r, ok, err := route(p, ev.Lease)
		b.skips.Set(b.log, &backend.LeaseError{Subnet: ev.Lease.Subnet, Err: err})
		if errors.Is(err, ErrNotAdjacent) {
			b.notAdjacent[key] = true
		}
		if ok {
			b.routes[key] = r
		}
	}
	for _, ev := range evs {
		if r, ok := b.routes[ev.Lease.Key()]; ok && !slices.Contains(want, r) {
			want = append(want, r)
		}
	}
	n, err := b.apply(have, want, nil)
	b.synced = err == nil
	if n > 0 {
		b.log.Debug("updated routes", "changes", n, "events", len(evs))
	}
	return err
}

// apply takes the routes from have to want: removals first, then the
// routes put in place. It carries on past failures and returns them all,
// with the number of changes made.
func (b *Backend) apply(have, want []netlinkx.Route, owned func(netlinkx.Route) bool) (int, error) {
	put, del := backend.Diff(have, want, netlinkx.Route.Key, owned)
	var errs []error
	for _, r := range del {
		if err := b.h.RouteDel(r); err != nil {
			errs = append(errs, err)
		}
	}
	for _, r := range put {
		if err := b.h.RouteReplace(r); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return len(put) + len(del), fmt.Errorf("host-gw: %w", err)
	}
	return len(put) + len(del), nil
}

func (b *Backend) params(own lease.Lease) Params {
	return Params{
		Network:        b.p.Network.Network,
		Own:            own.Subnet,
		PublicIP:       b.p.PublicIP(own),
		Underlay:       b.p.Ext.Index,
		UnderlayName:   b.p.Ext.Name,
		UnderlaySubnet: b.p.Ext.Subnet,
	}
}

// Close does nothing: the routes outlive the agent.
func (b *Backend) Close() error { return nil }
