package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/weft-net/weft/internal/netlinkx"
)

// blackholer is what the blackhole keeper needs of netlinkx.Handle.
type blackholer interface {
	BlackholeList(f netlinkx.Family) ([]netip.Prefix, error)
	BlackholeAdd(p netip.Prefix) error
	BlackholeDel(p netip.Prefix) error
}

// blackholeKeeper keeps --ip-blackhole-route: a blackhole route for each of
// this node's subnets, added when no blackhole route with that destination
// exists (flanneld main.go:445-474), checked every period. The route has
// the largest metric (netlinkx.BlackholeMetric), so the CNI bridge's route
// to the pods wins while it exists. flanneld checks
// first after one period; the keeper checks at once. When the lease moves,
// the blackhole it added for the old subnet goes, since that subnet may
// now be another node's. On exit the routes stay, as the rest of the
// datapath does.
type blackholeKeeper struct {
	h      blackholer
	period time.Duration
	log    *slog.Logger
	set    chan []netip.Prefix
	// occupied are subnets whose blackhole could not be added because
	// another route has its place; Run's alone.
	occupied map[netip.Prefix]bool
}

func newBlackholeKeeper(h blackholer, period time.Duration, log *slog.Logger) *blackholeKeeper {
	return &blackholeKeeper{h: h, period: period, log: log, set: make(chan []netip.Prefix, 1), occupied: map[netip.Prefix]bool{}}
}

// Set hands the keeper this node's subnets. It never blocks; the latest
// wins.
func (k *blackholeKeeper) Set(subnets []netip.Prefix) {
	for {
		select {
		case k.set <- slices.Clone(subnets):
			return
		default:
		}
		select {
		case <-k.set:
		default:
		}
	}
}

// Run keeps the routes until ctx ends. It waits for the first Set.
func (k *blackholeKeeper) Run(ctx context.Context) {
	var want []netip.Prefix
	select {
	case want = <-k.set:
	case <-ctx.Done():
		return
	}
	t := time.NewTicker(k.period)
	defer t.Stop()
	var owned []netip.Prefix // routes in place for an earlier want
	for {
		var err error
		owned, err = k.ensure(want, owned)
		if err != nil && ctx.Err() == nil {
			k.log.Error("blackhole route: ensure failed; retrying", "err", err, "every", k.period)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case want = <-k.set:
		}
	}
}

// ensure adds the blackhole routes of want that are missing and removes
// those of owned (in place for an earlier want) that want no longer has.
// It returns what is owned now: want, and any old route it failed to
// remove, to be tried again.
func (k *blackholeKeeper) ensure(want, owned []netip.Prefix) ([]netip.Prefix, error) {
	have, err := k.h.BlackholeList(netlinkx.FamilyAll)
	if err != nil {
		return owned, err
	}
	now := slices.Clone(want)
	var errs []error
	for _, p := range owned {
		if slices.Contains(want, p) || !slices.Contains(have, p) {
			continue
		}
		if err := k.h.BlackholeDel(p); err != nil {
			now = append(now, p)
			errs = append(errs, err)
			continue
		}
		k.log.Info("blackhole route removed: no longer this node's subnet", "subnet", p)
	}
	for _, p := range want {
		if slices.Contains(have, p) {
			continue
		}
		err := k.h.BlackholeAdd(p)
		if netlinkx.IsExist(err) {
			// Another route to p at the blackhole's own metric, which weft
			// did not add: it keeps its place. Said once, not every period.
			if !k.occupied[p] {
				k.occupied[p] = true
				k.log.Warn("no blackhole route: another route to the subnet has its metric", "subnet", p, "metric", netlinkx.BlackholeMetric)
			}
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		delete(k.occupied, p)
		if slices.Contains(owned, p) {
			k.log.Warn("blackhole route was missing; added again", "subnet", p)
		} else {
			k.log.Info("blackhole route added", "subnet", p)
		}
	}
	return now, errors.Join(errs...)
}
