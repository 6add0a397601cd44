package hostgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
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

	// routes holds, by lease key and family, the routes the kernel was
	// last converged to: the base of an incremental reconcile and of
	// Update, valid only while synced. notAdjacent holds the leases (and
	// families) refused for want of L2 adjacency.
	routes      map[famKey]netlinkx.Route
	notAdjacent map[famKey]bool
	synced      bool
	own         string // key of the lease routes was made for
	skips       backend.SkipLog
}

// famKey is one family's half of a lease.
type famKey struct {
	key string
	v6  bool
}

var (
	_ backend.Backend = (*Backend)(nil)
	_ backend.Updater = (*Backend)(nil)
)

// New returns the host-gw backend for p, programming the namespace of h.
func New(p backend.Params, h *netlinkx.Handle, log *slog.Logger) (*Backend, error) {
	if p.Network == nil || !(p.Network.EnableIPv4 && p.Network.Network.IsValid()) && !(p.Network.EnableIPv6 && p.Network.IPv6Network.IsValid()) {
		return nil, errors.New("host-gw: no cluster network configured")
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
	if _, err := b.families(own); err != nil {
		return backend.PodLink{}, err
	}
	return podLink(b.p.Ext, b.mtu), ctx.Err()
}

// Refused is how many remote leases are refused because their nodes are
// not on this node's L2 segment.
func (b *Backend) Refused() int {
	leases := map[string]bool{}
	for fk := range b.notAdjacent {
		leases[fk.key] = true
	}
	return len(leases)
}

// Reconcile converges the underlay's routes inside the cluster network to
// the lease set: with full (or after a failure) against a dump of the
// kernel, otherwise against its previous call. Leases whose nodes are not
// adjacent are refused: logged with the reason when that changes and
// counted by Refused, not returned, since one misplaced node must not make
// every other node's datapath count as failed. Errors are the kernel's.
func (b *Backend) Reconcile(ctx context.Context, own lease.Lease, leases []lease.Lease, full bool) error {
	return b.reconcile(ctx, own, leases, full, nil)
}

// ReadAhead reads what a full Reconcile compares the lease set with, the
// underlay's routes of each family, and may run on any goroutine while
// the other methods run (it reads only the kernel), so that the daemon's
// event loop goes on with events meanwhile. It returns that full
// Reconcile, against what it read, to be called like the other methods.
// What was read may be older than a change made since by Update: the pass
// then writes a route again or deletes one already gone, which changes
// nothing.
func (b *Backend) ReadAhead(ctx context.Context) (func(context.Context, lease.Lease, []lease.Lease) error, error) {
	have := []netlinkx.Route{} // not nil: read, if empty
	for _, v6 := range []bool{false, true} {
		n := b.p.Network
		if v6 && !(n.EnableIPv6 && n.IPv6Network.IsValid()) || !v6 && !(n.EnableIPv4 && n.Network.IsValid()) {
			continue
		}
		rs, err := b.underlayRoutes(v6)
		if err != nil {
			return nil, err
		}
		have = append(have, rs...)
	}
	return func(ctx context.Context, own lease.Lease, leases []lease.Lease) error {
		return b.reconcile(ctx, own, leases, true, have)
	}, nil
}

func (b *Backend) underlayRoutes(v6 bool) ([]netlinkx.Route, error) {
	fam := netlinkx.FamilyV4
	if v6 {
		fam = netlinkx.FamilyV6
	}
	rs, err := b.h.RouteList(netlinkx.RouteFilter{Family: fam, LinkIndex: b.p.Ext.Index})
	if err != nil {
		return nil, fmt.Errorf("host-gw: %w", err)
	}
	return rs, nil
}

// reconcile is Reconcile; a full one compares with read when that is set
// (ReadAhead's), else with the kernel as it is now.
func (b *Backend) reconcile(ctx context.Context, own lease.Lease, leases []lease.Lease, full bool, read []netlinkx.Route) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fams, err := b.families(own)
	if err != nil {
		return err
	}
	routes := make(map[famKey]netlinkx.Route, len(leases)*len(fams))
	b.notAdjacent = map[famKey]bool{}
	var want []netlinkx.Route
	var skipped []*backend.LeaseError
	for _, p := range fams {
		for _, l := range leases {
			fk := famKey{l.Key(), p.IPv6}
			r, ok, err := route(p, l)
			switch {
			case errors.Is(err, ErrNotAdjacent):
				b.notAdjacent[fk] = true
				fallthrough
			case err != nil:
				skipped = append(skipped, &backend.LeaseError{Subnet: p.subnet(l), Err: err})
			case ok:
				routes[fk] = r
				want = append(want, r)
			}
		}
	}
	b.skips.Report(b.log, skipped)

	incremental := !full && b.synced && own.Key() == b.own
	var have []netlinkx.Route
	owned := func(netlinkx.Route) bool { return true }
	switch {
	case incremental:
		have = slices.Collect(maps.Values(b.routes))
	case read != nil:
		have = read
	default:
		for _, p := range fams {
			rs, err := b.underlayRoutes(p.IPv6)
			if err != nil {
				b.synced = false
				return err
			}
			have = append(have, rs...)
		}
	}
	if !incremental {
		owned = func(r netlinkx.Route) bool {
			for _, p := range fams {
				if backend.Manages(p.Network, p.Own, r.Dst) && !p.Own.Overlaps(r.Dst) {
					return true
				}
			}
			return false
		}
	}
	b.routes, b.own = routes, own.Key()
	n, err := b.apply(have, want, owned, !incremental)
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
	if !b.synced || own.Key() != b.own {
		return backend.ErrStale
	}
	fams, err := b.families(own)
	if err != nil {
		return err
	}
	var have, want []netlinkx.Route
	for _, p := range fams {
		for _, ev := range evs {
			fk := famKey{ev.Lease.Key(), p.IPv6}
			if r, ok := b.routes[fk]; ok {
				have = append(have, r)
				delete(b.routes, fk)
			}
			delete(b.notAdjacent, fk)
			sn := p.subnet(ev.Lease)
			if ev.Type == lease.Removed {
				if sn.IsValid() {
					b.skips.Set(b.log, &backend.LeaseError{Subnet: sn})
				}
				continue
			}
			r, ok, err := route(p, ev.Lease)
			if sn.IsValid() {
				b.skips.Set(b.log, &backend.LeaseError{Subnet: sn, Err: err})
			}
			if errors.Is(err, ErrNotAdjacent) {
				b.notAdjacent[fk] = true
			}
			if ok {
				b.routes[fk] = r
			}
		}
		for _, ev := range evs {
			if r, ok := b.routes[famKey{ev.Lease.Key(), p.IPv6}]; ok && !slices.Contains(want, r) {
				want = append(want, r)
			}
		}
	}
	n, err := b.apply(have, want, nil, false)
	b.synced = err == nil
	if n > 0 {
		b.log.Debug("updated routes", "changes", n, "events", len(evs))
	}
	return err
}

// apply takes the routes from have to want: removals first, then the
// routes put in place. It carries on past failures and returns them all,
// with the number of changes made. With batched (a full pass: thousands
// of routes at start) it writes many routes per system call, in the same
// order; an update's few go one at a time.
func (b *Backend) apply(have, want []netlinkx.Route, owned func(netlinkx.Route) bool, batched bool) (int, error) {
	put, del := backend.Diff(have, want, netlinkx.Route.Key, owned)
	var errs []error
	if batched && len(put)+len(del) > 0 {
		bt := b.h.NewBatch()
		for _, r := range del {
			bt.RouteDel(r)
		}
		for _, r := range put {
			bt.RouteReplace(r)
		}
		errs = bt.Flush()
	} else {
		for _, r := range del {
			errs = append(errs, b.h.RouteDel(r))
		}
		for _, r := range put {
			errs = append(errs, b.h.RouteReplace(r))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return len(put) + len(del), fmt.Errorf("host-gw: %w", err)
	}
	return len(put) + len(del), nil
}

// families is the Params of each family the config enables, IPv4 first,
// or an error when own lacks a subnet of one.
func (b *Backend) families(own lease.Lease) ([]Params, error) {
	n := b.p.Network
	var ps []Params
	if n.EnableIPv4 && n.Network.IsValid() {
		if !own.Subnet.IsValid() {
			return nil, errors.New("host-gw: own lease has no IPv4 subnet")
		}
		ps = append(ps, Params{
			Network:        n.Network,
			Own:            own.Subnet,
			PublicIP:       b.p.PublicIP(own),
			Underlay:       b.p.Ext.Index,
			UnderlayName:   b.p.Ext.Name,
			UnderlaySubnet: b.p.Ext.Subnet,
		})
	}
	if n.EnableIPv6 && n.IPv6Network.IsValid() {
		if !own.IPv6Subnet.IsValid() {
			return nil, errors.New("host-gw: own lease has no IPv6 subnet")
		}
		ps = append(ps, Params{
			IPv6:           true,
			Network:        n.IPv6Network,
			Own:            own.IPv6Subnet,
			PublicIP:       b.p.PublicIPv6(own),
			Underlay:       b.p.Ext.Index,
			UnderlayName:   b.p.Ext.Name,
			UnderlaySubnet: b.p.Ext.Subnet6,
		})
	}
	return ps, nil
}

// Close does nothing: the routes outlive the agent.
func (b *Backend) Close() error { return nil }
