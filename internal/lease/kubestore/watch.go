package kubestore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"k8s.io/client-go/tools/cache"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

// Watch implements lease.Store: one call with every node that publishes a
// usable lease (kube-subnet-manager=true), made once the node list has
// synced, then a call per batch of changes, until ctx ends.
//
// Each batch compares the nodes that changed with what fn was told, so
// every change to a lease is delivered: a new podCIDR, and an update of
// one address family in a dual-stack cluster. flannel drops both
// (kube.go:318-329 forwards an update only when the annotations of every
// enabled family changed, and never looks at podCIDRs). A node whose
// lease moved to another subnet is reported Removed (the old subnet) and
// Added; within a batch removals come first, so a subnet that passed from
// one node to another ends up held by the new one. A node that stops
// parsing is Removed; unparsable nodes are logged once per distinct error
// and skipped. This node is reported like any other.
//
// The families (IPv4, IPv6) come from the network config file, read when
// Watch starts; while it is missing or invalid, Watch waits for a valid
// one. Watch returns only when ctx ends (or the Store is closed).
func (s *Store) Watch(ctx context.Context, fn func([]lease.Event)) error {
	fam, err := s.waitFamilies(ctx)
	if err != nil {
		return err
	}
	if !s.informer.HasSynced() {
		s.log.Info("lease watch: waiting for the node list to sync")
		if err := s.waitSynced(ctx, 1<<62); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	q := newNameQueue(s.o.EventQueueDepth, ctx.Done())
	reg, err := s.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { q.addObj(obj) },
		UpdateFunc: func(_, obj any) { q.addObj(obj) },
		DeleteFunc: func(obj any) { q.addObj(obj) },
	})
	if err != nil {
		cancel()
		return fmt.Errorf("lease watch: %w", err)
	}
	defer func() {
		cancel() // first: a handler waiting for room in q gives up
		_ = s.informer.RemoveEventHandler(reg)
	}()

	// The handler was registered first, so nothing that changes after
	// this listing is missed; it also replays every node, which compares
	// equal to the snapshot and yields nothing.
	w := &watcher{s: s, fam: fam, known: map[string]lease.Lease{}, bad: map[string]string{}}
	keys := s.informer.GetStore().ListKeys()
	slices.Sort(keys)
	events := w.update(keys)
	s.log.Debug("lease watch: snapshot", "leases", len(w.known), "nodes", len(keys))
	if events == nil {
		events = []lease.Event{}
	}
	fn(events)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-q.ready:
			if evs := w.update(q.take()); len(evs) > 0 {
				fn(evs)
			}
		}
	}
}

// configRetry is how often Watch reads a missing or invalid net-conf again.
const configRetry = 5 * time.Second

// waitFamilies reads the families until the net-conf parses, logging each
// distinct failure once.
func (s *Store) waitFamilies(ctx context.Context) (families, error) {
	last := ""
	for {
		fam, err := s.families(ctx)
		if err == nil {
			return fam, nil
		}
		if msg := err.Error(); msg != last {
			last = msg
			s.log.Error("lease watch: waiting for a usable net-conf", "err", err, "retry_every", configRetry)
		}
		select {
		case <-ctx.Done():
			return families{}, ctx.Err()
		case <-time.After(configRetry):
		}
	}
}

// families reads which address families the network config enables.
func (s *Store) families(ctx context.Context) (families, error) {
	raw, err := s.NetworkConfig(ctx)
	if err != nil {
		return families{}, fmt.Errorf("lease watch: %w", err)
	}
	n, _, err := config.Parse(raw)
	if err != nil {
		return families{}, fmt.Errorf("lease watch: %s: %w", s.o.NetConfigPath, err)
	}
	return families{v4: n.EnableIPv4, v6: n.EnableIPv6}, nil
}

// watcher is what one Watch has told its caller: the lease of each node.
type watcher struct {
	s     *Store
	fam   families
	known map[string]lease.Lease // by node name
	bad   map[string]string      // node name -> error last logged
}

// update compares the named nodes' leases in the cache with known and
// returns the events that tell the difference, removals first.
func (w *watcher) update(names []string) []lease.Event {
	var removed, added []lease.Event
	for _, name := range names {
		old, had := w.known[name]
		l, ok := w.lease(name)
		switch {
		case !ok && had:
			delete(w.known, name)
			removed = append(removed, lease.Event{Type: lease.Removed, Lease: old})
			w.s.log.Debug("lease removed", "node", name, "subnet", old.Key())
		case !ok:
		case had && old.Unchanged(l):
		default:
			if had && old.Key() != l.Key() {
				removed = append(removed, lease.Event{Type: lease.Removed, Lease: old})
			}
			w.known[name] = l
			added = append(added, lease.Event{Type: lease.Added, Lease: l})
			w.s.log.Debug("lease added", "node", name, "subnet", l.Key(), "public_ip", l.Attrs.PublicIP)
		}
	}
	return append(removed, added...)
}

// lease returns the named node's lease, if it is in the cache and
// publishes a usable one.
func (w *watcher) lease(name string) (lease.Lease, bool) {
	n, ok := w.s.cachedNode(name)
	if !ok {
		delete(w.bad, name)
		return lease.Lease{}, false
	}
	l, err := nodeLease(w.s.keys, n, w.fam)
	if errors.Is(err, errNotManaged) {
		delete(w.bad, name)
		return lease.Lease{}, false
	}
	if err != nil {
		if msg := err.Error(); w.bad[name] != msg {
			w.bad[name] = msg
			w.s.log.Warn("ignoring node with an unusable lease", "node", name, "err", msg)
		}
		return lease.Lease{}, false
	}
	delete(w.bad, name)
	return l, true
}

// nameQueue is the set of nodes changed since the watcher last looked,
// bounded: a node already queued costs nothing more, and when max distinct
// nodes are queued the informer waits (its own buffer holds what follows)
// until the watcher takes them.
type nameQueue struct {
	max   int
	done  <-chan struct{}
	ready chan struct{} // one token while names is not empty

	mu    sync.Mutex
	names map[string]struct{}
	space chan struct{} // closed when names are taken
}

func newNameQueue(max int, done <-chan struct{}) *nameQueue {
	return &nameQueue{max: max, done: done, ready: make(chan struct{}, 1),
		names: map[string]struct{}{}, space: make(chan struct{})}
}

func (q *nameQueue) addObj(obj any) {
	if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
		q.add(key)
	}
}

func (q *nameQueue) add(name string) {
	for {
		q.mu.Lock()
		if _, ok := q.names[name]; ok || len(q.names) < q.max {
			q.names[name] = struct{}{}
			q.mu.Unlock()
			select {
			case q.ready <- struct{}{}:
			default:
			}
			return
		}
		space := q.space
		q.mu.Unlock()
		select {
		case <-space:
		case <-q.done:
			return
		}
	}
}

// take empties the queue and returns its names, sorted.
func (q *nameQueue) take() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	names := make([]string, 0, len(q.names))
	for n := range q.names {
		names = append(names, n)
	}
	slices.Sort(names)
	// A map keeps its buckets when cleared: the first take, with every
	// node, would hold room for the whole cluster for good.
	if len(names) > 64 {
		q.names = map[string]struct{}{}
	} else {
		clear(q.names)
	}
	close(q.space)
	q.space = make(chan struct{})
	return names
}
