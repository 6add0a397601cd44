package hostgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

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

	// applied holds the routes the kernel was last converged to, the base
	// of an incremental reconcile; valid only while haveApplied.
	applied     []netlinkx.Route
	haveApplied bool
	own         netip.Prefix
	refused     int
	skips       backend.SkipLog
}

var _ backend.Backend = (*Backend)(nil)

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

// Refused is how many remote leases the last Reconcile refused because
// their nodes are not on this node's L2 segment.
func (b *Backend) Refused() int { return b.refused }

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
	want, skipped := Desired(p, leases)
	b.skips.Report(b.log, skipped)
	b.refused = 0
	for _, e := range skipped {
		if errors.Is(e, ErrNotAdjacent) {
			b.refused++
		}
	}

	have, owned := b.applied, func(netlinkx.Route) bool { return true }
	incremental := !full && b.haveApplied && own.Subnet == b.own
	if !incremental {
		b.haveApplied = false
		var err error
		if have, err = b.h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4, LinkIndex: p.Underlay}); err != nil {
			return fmt.Errorf("host-gw: %w", err)
		}
		owned = func(r netlinkx.Route) bool { return backend.Manages(p.Network, p.Own, r.Dst) }
	}
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
	if len(errs) > 0 {
		b.haveApplied = false
	} else {
		b.applied, b.haveApplied, b.own = want, true, own.Subnet
	}
	if n := len(put) + len(del); n > 0 {
		lvl := slog.LevelDebug
		if !incremental {
			lvl = slog.LevelInfo // a full pass that changes things repaired something
		}
		b.log.Log(ctx, lvl, "reconciled routes", "added", len(put), "removed", len(del), "routes", len(want), "full", !incremental)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("host-gw: %w", err)
	}
	return nil
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
