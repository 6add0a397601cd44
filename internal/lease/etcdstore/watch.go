package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/backoff"
	"github.com/weft-net/weft/internal/lease"
)

// Reconnect backoff bounds: short, so that an agent follows the store
// again within a second or two of its return (a watch is one stream per
// agent; retrying it costs the cluster little).
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = time.Second
)

// Watch implements lease.Store. The leases it reports carry no Expiration:
// the agent needs only its own lease's, which Acquire and Renew return,
// and a TimeToLive call per lease made a cluster restart cost N² calls.
// It lists the subnets at revision R, reports
// them all (fn is called even when there are none, so the caller knows the
// snapshot is complete), then follows changes from R+1. A lost connection
// resumes from the last revision seen; a compacted revision is recovered by
// listing again and reporting the difference. It returns ctx.Err() when ctx
// ends.
func (s *Store) Watch(ctx context.Context, fn func([]lease.Event)) error {
	return s.newWatcher(fn).run(ctx)
}

// watcher holds what the caller has been told: known is the lease set as
// of revision rev. rev 0 means nothing has been listed yet.
type watcher struct {
	s     *Store
	fn    func([]lease.Event)
	known map[string]lease.Lease // by full etcd key
	rev   int64
	// relist is set when the watch cannot resume from rev+1 (compaction).
	relist bool
}

func (s *Store) newWatcher(fn func([]lease.Event)) *watcher {
	return &watcher{s: s, fn: fn, known: map[string]lease.Lease{}}
}

func (w *watcher) run(ctx context.Context) error {
	// Without a leader a member serves stale data and never sends events;
	// this makes it cancel our watch instead, so we reconnect elsewhere.
	ctx = clientv3.WithRequireLeader(ctx)
	attempt, warned := 0, false
	for {
		var err error
		if w.rev == 0 || w.relist {
			err = w.list(ctx)
		}
		if err == nil {
			err = w.follow(ctx, func() {
				if warned {
					w.s.log.Info("lease watch resumed", "revision", w.rev)
					warned = false
				}
				attempt = 0
			})
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d := backoff.Jittered(attempt, minBackoff, maxBackoff)
		// One interruption is routine in a cluster (a member or the
		// leader went away) and costs nothing: the watch resumes from its
		// revision. Warn once when resuming keeps failing (a quorum lost
		// cancels every retry within a second), and say when it works.
		lvl := slog.LevelInfo
		switch {
		case warned:
			lvl = slog.LevelDebug
		case attempt > 0:
			lvl, warned = slog.LevelWarn, true
		}
		attempt++
		w.s.log.Log(ctx, lvl, "lease watch interrupted; resuming", "err", err, "revision", w.rev, "retry_in", d.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
}

// list reads the whole lease set, reports how it differs from known and
// makes it the new known set.
func (w *watcher) list(ctx context.Context) error {
	fresh := make(map[string]lease.Lease, len(w.known))
	var changed []string
	rev, err := w.s.listSubnets(ctx, func(kv *mvccpb.KeyValue) {
		l, err := w.s.parse(kv)
		if err != nil {
			w.s.log.Warn("ignoring bad lease", "key", lease.Clip(string(kv.Key)), "err", err)
			return
		}
		key := string(kv.Key)
		if old, ok := w.known[key]; ok && old.Unchanged(l) {
			fresh[key] = old
			return
		}
		fresh[key] = l
		changed = append(changed, key)
	})
	if err != nil {
		return fmt.Errorf("list %s: %w", w.s.subnets, err)
	}

	var events []lease.Event
	for _, key := range changed {
		events = append(events, lease.Event{Type: lease.Added, Lease: fresh[key]})
	}
	for key, l := range w.known {
		if _, ok := fresh[key]; !ok {
			events = append(events, lease.Event{Type: lease.Removed, Lease: l})
		}
	}
	sort.SliceStable(events, func(i, j int) bool { return events[i].Lease.Key() < events[j].Lease.Key() })
	initial := w.rev == 0
	w.known, w.rev, w.relist = fresh, rev, false
	w.s.log.Debug("listed leases", "count", len(fresh), "revision", w.rev, "changes", len(events))
	if initial || len(events) > 0 {
		w.emit(events)
	}
	return nil
}

// listPage is how many keys one Get of a listing asks for: thousands of
// leases in one response are megabytes held at once (the response, gRPC's
// buffers, the parsed leases), the largest part of an agent's peak memory.
const listPage = 500

// listSubnets calls fn for every subnet key as of one revision, which it
// returns, reading a page at a time.
func (s *Store) listSubnets(ctx context.Context, fn func(*mvccpb.KeyValue)) (rev int64, err error) {
	key, end := s.subnets, clientv3.GetPrefixRangeEnd(s.subnets)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(listPage)}
		if rev != 0 {
			// The later pages at the first one's revision: one
			// consistent listing, as a single Get would be.
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, key, opts...)
		if err != nil {
			return 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			fn(kv)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// follow watches from rev+1 until the watch ends. progress is called
// whenever the watch delivers, to reset the reconnect backoff.
func (w *watcher) follow(ctx context.Context, progress func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := w.s.cli.Watch(ctx, w.s.subnets, clientv3.WithPrefix(), clientv3.WithPrevKV(),
		clientv3.WithRev(w.rev+1), clientv3.WithProgressNotify())
	for wr := range wch {
		if wr.CompactRevision != 0 {
			w.relist = true
			return fmt.Errorf("resume at revision %d: %w (compacted to %d)", w.rev+1, rpctypes.ErrCompacted, wr.CompactRevision)
		}
		if err := wr.Err(); err != nil {
			return err
		}
		progress()
		if wr.IsProgressNotify() {
			// Everything up to this revision has been delivered.
			w.rev = max(w.rev, wr.Header.GetRevision())
			continue
		}
		var events []lease.Event
		for _, ev := range wr.Events {
			if e, ok := w.apply(ctx, ev); ok {
				events = append(events, e...)
			}
			w.rev = ev.Kv.ModRevision
		}
		if len(events) > 0 {
			w.emit(events)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("watch channel closed")
}

// apply folds one etcd event into known and returns what the caller must
// be told. A value that stops parsing removes the lease it replaced, which
// is also what a re-list would conclude.
func (w *watcher) apply(ctx context.Context, ev *clientv3.Event) ([]lease.Event, bool) {
	key := string(ev.Kv.Key)
	old, had := w.known[key]
	if ev.Type == clientv3.EventTypeDelete {
		if !had {
			return nil, false
		}
		delete(w.known, key)
		w.s.log.Debug("lease removed", "key", key)
		return []lease.Event{{Type: lease.Removed, Lease: old}}, true
	}
	l, err := w.s.parse(ev.Kv)
	if err != nil {
		w.s.log.Warn("ignoring bad lease", "key", lease.Clip(key), "err", err)
		if !had {
			return nil, false
		}
		delete(w.known, key)
		return []lease.Event{{Type: lease.Removed, Lease: old}}, true
	}
	if had && old.Unchanged(l) {
		// A renewal that rewrote the same value (flannel renews this way).
		return nil, false
	}
	w.known[key] = l
	w.s.log.Debug("lease added", "key", key, "public_ip", l.Attrs.PublicIP)
	return []lease.Event{{Type: lease.Added, Lease: l}}, true
}

func (w *watcher) emit(events []lease.Event) {
	if events == nil {
		events = []lease.Event{}
	}
	w.fn(events)
}
