package etcdstore

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/etcdtest"
	"github.com/weft-net/weft/internal/lease"
)

const subnets = "/coreos.com/network/subnets/"

func TestWatchEvents(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, _ := newStore(t, cli, time.Hour)
	ctx := ctxT(t)
	n := network(t, net16)

	a, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.1", "c6:d2:32:6f:8f:01"), lease.Hint{})
	if err != nil {
		t.Fatal(err)
	}
	put(t, cli, subnets+"10.244.9.0-24", `{"PublicIP":"192.0.2.9","PublicIPv6":null}`) // a reservation

	ch := watch(t, s)
	snap := nextBatch(t, ch, 10*time.Second)
	if want := "added " + a.Key() + " 192.0.2.1; added 10.244.9.0-24 192.0.2.9"; describe(snap) != want && describe(snap) != "added 10.244.9.0-24 192.0.2.9; added "+a.Key()+" 192.0.2.1" {
		t.Fatalf("snapshot: %s; want %s", describe(snap), want)
	}

	b, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.2", "c6:d2:32:6f:8f:02"), lease.Hint{})
	if err != nil {
		t.Fatal(err)
	}
	if got := describe(nextBatch(t, ch, 5*time.Second)); got != "added "+b.Key()+" 192.0.2.2" {
		t.Fatalf("after acquire: %s", got)
	}
	// A restart with the same attrs re-puts the key with a new etcd lease, as
	// flannel's renewal does: nothing changed for the other nodes.
	if _, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.2", "c6:d2:32:6f:8f:02"), lease.Hint{}); err != nil {
		t.Fatal(err)
	}
	noBatch(t, ch, 500*time.Millisecond)
	// A new VTEP MAC is news.
	if _, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.2", "c6:d2:32:6f:8f:22"), lease.Hint{}); err != nil {
		t.Fatal(err)
	}
	evs := nextBatch(t, ch, 5*time.Second)
	if describe(evs) != "added "+b.Key()+" 192.0.2.2" || string(evs[0].Lease.Attrs.BackendData) != `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:22"}` {
		t.Fatalf("after attrs change: %s %s", describe(evs), evs[0].Lease.Attrs.BackendData)
	}
	if _, err := cli.Delete(ctx, s.LeaseKey(a)); err != nil {
		t.Fatal(err)
	}
	evs = nextBatch(t, ch, 5*time.Second)
	if describe(evs) != "removed "+a.Key()+" 192.0.2.1" || string(evs[0].Lease.Attrs.BackendData) != `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:01"}` {
		t.Fatalf("after delete: %s", describe(evs))
	}
}

func TestWatchEmptySnapshot(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, _ := newStore(t, cli, time.Hour)
	ch := watch(t, s)
	if evs := nextBatch(t, ch, 10*time.Second); len(evs) != 0 {
		t.Fatalf("snapshot of an empty store: %s", describe(evs))
	}
}

func TestWatchIgnoresGarbage(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, logs := newStore(t, cli, time.Hour)
	ctx := ctxT(t)
	put(t, cli, subnets+"10.244.3.0-24", `not json`)
	put(t, cli, subnets+"bogus", `{"PublicIP":"192.0.2.1","PublicIPv6":null}`)
	put(t, cli, subnets+"10.244.4.0-24", `{"PublicIP":"192.0.2.4","PublicIPv6":null}`)

	ch := watch(t, s)
	if got := describe(nextBatch(t, ch, 10*time.Second)); got != "added 10.244.4.0-24 192.0.2.4" {
		t.Fatalf("snapshot: %s", got)
	}
	if logs.find("level=WARN", "10.244.3.0-24") == "" || logs.find("level=WARN", "bogus") == "" {
		t.Errorf("garbage not logged at warn with its key")
	}
	// More garbage while watching: skipped, and the watch goes on.
	put(t, cli, subnets+"10.244.5.0-24", `{"PublicIP":"fd00::1"}`)
	put(t, cli, subnets+"10.244.5.1-24", `{"PublicIP":"192.0.2.5","PublicIPv6":null}`)
	put(t, cli, subnets+"10.244.6.0-24", `{"PublicIP":"192.0.2.6","PublicIPv6":null}`)
	if got := describe(nextBatch(t, ch, 5*time.Second)); got != "added 10.244.6.0-24 192.0.2.6" {
		t.Fatalf("after garbage and a good lease: %s", got)
	}
	// A good lease overwritten with garbage no longer publishes anything.
	put(t, cli, subnets+"10.244.6.0-24", `{`)
	if got := describe(nextBatch(t, ch, 5*time.Second)); got != "removed 10.244.6.0-24 192.0.2.6" {
		t.Fatalf("after a lease turned to garbage: %s", got)
	}
	if _, err := cli.Delete(ctx, subnets+"10.244.3.0-24"); err != nil { // garbage deleted: no event
		t.Fatal(err)
	}
	noBatch(t, ch, 300*time.Millisecond)
}

// Each lease carries its key's CreateRevision, which a renewal keeps (the
// age admission judges contests by), and a key in another spelling than
// the canonical one is refused: it would overwrite that lease's entry.
func TestWatchLeaseAgeAndCanonicalKeys(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, logs := newStore(t, cli, time.Hour)
	ctx := ctxT(t)
	r, err := cli.Put(ctx, subnets+"10.244.4.0-24", `{"PublicIP":"192.0.2.4","PublicIPv6":null}`)
	if err != nil {
		t.Fatal(err)
	}
	ch := watch(t, s)
	evs := nextBatch(t, ch, 10*time.Second)
	if len(evs) != 1 || evs[0].Lease.Created != r.Header.Revision {
		t.Fatalf("snapshot %+v: want Created %d", evs, r.Header.Revision)
	}
	put(t, cli, subnets+"10.244.4.0-24", `{"PublicIP":"192.0.2.44","PublicIPv6":null}`)
	if evs := nextBatch(t, ch, 5*time.Second); len(evs) != 1 || evs[0].Lease.Created != r.Header.Revision {
		t.Fatalf("after an in-place change %+v: want Created %d", evs, r.Header.Revision)
	}
	put(t, cli, subnets+"10.244.5.0-24&FD00:0:0:5::-64", `{"PublicIP":"192.0.2.5","PublicIPv6":"fd00::5"}`)
	put(t, cli, subnets+"10.244.6.0-24", `{"PublicIP":"192.0.2.6","PublicIPv6":null}`)
	if got := describe(nextBatch(t, ch, 5*time.Second)); got != "added 10.244.6.0-24 192.0.2.6" {
		t.Fatalf("after a non-canonical key and a good lease: %s", got)
	}
	if logs.find("level=WARN", "not in canonical form") == "" {
		t.Errorf("non-canonical key not logged")
	}
}

func TestWatchReportsExpiry(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, _ := newStore(t, cli, 2*time.Second)
	ctx := ctxT(t)
	ch := watch(t, s)
	nextBatch(t, ch, 10*time.Second)

	l, err := s.Acquire(ctx, network(t, net16), vxlanAttrs("192.0.2.1", "c6:d2:32:6f:8f:01"), lease.Hint{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if got := describe(nextBatch(t, ch, 5*time.Second)); got != "added "+l.Key()+" 192.0.2.1" {
		t.Fatalf("after acquire: %s", got)
	}
	if got := describe(nextBatch(t, ch, 15*time.Second)); got != "removed "+l.Key()+" 192.0.2.1" {
		t.Fatalf("after the TTL: %s", got)
	}
	t.Logf("a 2s lease was reported removed after %v", time.Since(start).Round(10*time.Millisecond))
	if _, err := s.Renew(ctx, l); err == nil {
		t.Fatal("Renew of an expired lease succeeded")
	}
}

// The watcher is cut off at revision R; meanwhile leases are added,
// changed and deleted, and history is compacted past R. Resuming from R+1
// fails with ErrCompacted, so the only way to the right answer is a
// re-list reported as one diff.
func TestWatchRecoversFromCompaction(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, logs := newStore(t, cli, time.Hour)
	ctx := ctxT(t)
	put(t, cli, subnets+"10.244.1.0-24", `{"PublicIP":"192.0.2.1","PublicIPv6":null}`)
	put(t, cli, subnets+"10.244.2.0-24", `{"PublicIP":"192.0.2.2","PublicIPv6":null}`)
	put(t, cli, subnets+"10.244.3.0-24", `{"PublicIP":"192.0.2.3","PublicIPv6":null}`)

	var batches [][]lease.Event
	w := s.newWatcher(func(evs []lease.Event) { batches = append(batches, evs) })
	if err := w.list(ctx); err != nil {
		t.Fatal(err)
	}
	if len(batches) != 1 || len(batches[0]) != 3 {
		t.Fatalf("snapshot: %v", batches)
	}
	cut := w.rev

	put(t, cli, subnets+"10.244.2.0-24", `{"PublicIP":"192.0.2.2","PublicIPv6":null,"BackendType":"vxlan"}`) // changed
	put(t, cli, subnets+"10.244.3.0-24", `{"PublicIP":"192.0.2.3","PublicIPv6":null}`)                       // rewritten, same
	put(t, cli, subnets+"10.244.4.0-24", `{"PublicIP":"192.0.2.4","PublicIPv6":null}`)                       // new
	if _, err := cli.Delete(ctx, subnets+"10.244.1.0-24"); err != nil {                                      // gone
		t.Fatal(err)
	}
	put(t, cli, subnets+"10.244.5.0-24", `{"PublicIP":"192.0.2.5","PublicIPv6":null}`) // came and went
	if _, err := cli.Delete(ctx, subnets+"10.244.5.0-24"); err != nil {
		t.Fatal(err)
	}
	head, err := cli.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, head.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}

	ch := make(chan []lease.Event, 16)
	w.fn = func(evs []lease.Event) { ch <- evs }
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.run(runCtx) }()
	defer func() { cancel(); <-done }()

	got := describe(nextBatch(t, ch, 10*time.Second))
	want := "removed 10.244.1.0-24 192.0.2.1; added 10.244.2.0-24 192.0.2.2; added 10.244.4.0-24 192.0.2.4"
	if got != want {
		t.Fatalf("after compaction: %s\nwant %s", got, want)
	}
	if logs.find("compacted") == "" {
		t.Errorf("the recovery did not go through ErrCompacted")
	}
	if w.rev <= cut {
		t.Errorf("revision %d after re-list, want past %d", w.rev, cut)
	}
	// And it follows live changes again.
	put(t, cli, subnets+"10.244.6.0-24", `{"PublicIP":"192.0.2.6","PublicIPv6":null}`)
	if got := describe(nextBatch(t, ch, 5*time.Second)); got != "added 10.244.6.0-24 192.0.2.6" {
		t.Fatalf("after recovery: %s", got)
	}
}

// Watch survives its server going away and coming back: no event is lost
// or repeated.
func TestWatchSurvivesServerRestart(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	s, logs := newStore(t, cli, time.Hour)
	ctx := ctxT(t)
	put(t, cli, subnets+"10.244.1.0-24", `{"PublicIP":"192.0.2.1","PublicIPv6":null}`)
	ch := watch(t, s)
	if got := describe(nextBatch(t, ch, 10*time.Second)); got != "added 10.244.1.0-24 192.0.2.1" {
		t.Fatalf("snapshot: %s", got)
	}

	// One restart: each costs about 7 s, most of it etcd waiting for open
	// watch streams to end.
	for i := range 1 {
		begin := time.Now()
		srv.Restart(t)
		t.Logf("restart %d took %v", i+1, time.Since(begin).Round(time.Millisecond))
		begin = time.Now()
		// A fresh client writes, so the write does not wait on the watcher's
		// reconnection.
		w := srv.Client(t)
		ip := netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)})
		key := lease.Key(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(10 + i), 0}), 24), netip.Prefix{})
		put(t, w, subnets+key, `{"PublicIP":"`+ip.String()+`","PublicIPv6":null}`)
		if got := describe(nextBatch(t, ch, 30*time.Second)); got != "added "+key+" "+ip.String() {
			t.Fatalf("after restart %d: %s", i+1, got)
		}
		t.Logf("the watch delivered %v after the restart", time.Since(begin).Round(time.Millisecond))
	}
	if _, err := cli.Delete(ctx, subnets+"10.244.1.0-24"); err != nil {
		t.Fatal(err)
	}
	if got := describe(nextBatch(t, ch, 10*time.Second)); got != "removed 10.244.1.0-24 192.0.2.1" {
		t.Fatalf("after delete: %s", got)
	}
	if line := logs.find("interrupted"); line != "" {
		t.Logf("the watch reconnected itself: %s", line)
	}
}

// The watch channel closes under the watcher (as when the client gives up
// on a stream); Watch resumes from the last revision it saw, so changes made
// in between arrive once and in order, with no second snapshot.
func TestWatchResumesAfterDisconnect(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, logs := newStore(t, cli, time.Hour)
	ctx := ctxT(t)
	cut := &cuttableWatcher{cli: cli, inner: clientv3.NewWatcher(cli)}
	cli.Watcher = cut
	put(t, cli, subnets+"10.244.1.0-24", `{"PublicIP":"192.0.2.1","PublicIPv6":null}`)
	ch := watch(t, s)
	if got := describe(nextBatch(t, ch, 10*time.Second)); got != "added 10.244.1.0-24 192.0.2.1" {
		t.Fatalf("snapshot: %s", got)
	}
	cut.cut(t)
	put(t, cli, subnets+"10.244.2.0-24", `{"PublicIP":"192.0.2.2","PublicIPv6":null}`)
	if _, err := cli.Delete(ctx, subnets+"10.244.1.0-24"); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 2 {
		for _, e := range nextBatch(t, ch, 10*time.Second) {
			got = append(got, describe([]lease.Event{e}))
		}
	}
	if len(got) != 2 || got[0] != "added 10.244.2.0-24 192.0.2.2" || got[1] != "removed 10.244.1.0-24 192.0.2.1" {
		t.Fatalf("after the disconnect: %q", got)
	}
	noBatch(t, ch, 300*time.Millisecond)
	if logs.find("interrupted; resuming") == "" {
		t.Errorf("the watch did not go through its reconnect path")
	}
}

// cuttableWatcher is the client's real watcher with a way to end every
// watch channel it serves, as a client giving up on a stream does.
type cuttableWatcher struct {
	cli   *clientv3.Client
	mu    sync.Mutex
	inner clientv3.Watcher
}

func (c *cuttableWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inner.Watch(ctx, key, opts...)
}

func (c *cuttableWatcher) RequestProgress(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inner.RequestProgress(ctx)
}

func (c *cuttableWatcher) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inner.Close()
}

// cut closes the current watcher; later Watch calls get a fresh one.
func (c *cuttableWatcher) cut(t *testing.T) {
	c.mu.Lock()
	old := c.inner
	c.inner = clientv3.NewWatcher(c.cli)
	c.mu.Unlock()
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
}

// The lab writes a thousand leases; the initial snapshot must stay quick.
func TestWatchThousandLeases(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, _ := newStore(t, cli, time.Hour)
	const leases = 1000
	begin := time.Now()
	putLeases(t, cli, s.prefix, leases, 3600)
	t.Logf("wrote %d leases in %v", leases, time.Since(begin).Round(time.Millisecond))

	begin = time.Now()
	ch := watch(t, s)
	evs := nextBatch(t, ch, 30*time.Second)
	t.Logf("snapshot of %d leases in %v", len(evs), time.Since(begin).Round(time.Millisecond))
	if len(evs) != leases {
		t.Fatalf("snapshot has %d leases, want %d", len(evs), leases)
	}
	begin = time.Now()
	l, err := s.Acquire(ctxT(t), network(t, `{"Network":"10.16.0.0/12","Backend":{"Type":"vxlan"}}`),
		vxlanAttrs("198.51.100.1", "c6:d2:32:6f:8f:01"), lease.Hint{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Acquire among %d leases in %v", leases, time.Since(begin).Round(time.Millisecond))
	if got := describe(nextBatch(t, ch, 5*time.Second)); got != "added "+l.Key()+" 198.51.100.1" {
		t.Fatalf("after acquire: %s", got)
	}
}

// A listing longer than a page is read a page at a time, every key once,
// all as of the first page's revision: a key written meanwhile is not in
// it (the watch from that revision reports it).
func TestListSubnetsPaged(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, _ := newStore(t, cli, time.Hour)
	const leases = 2*listPage + 1
	putLeases(t, cli, s.prefix, leases, 3600)
	late := s.subnets + "10.255.255.0-24"
	seen := map[string]bool{}
	rev, err := s.listSubnets(ctxT(t), func(kv *mvccpb.KeyValue) {
		if len(seen) == 0 {
			if _, err := cli.Put(ctxT(t), late, "{}"); err != nil {
				t.Error(err)
			}
		}
		if seen[string(kv.Key)] {
			t.Errorf("%s listed twice", kv.Key)
		}
		seen[string(kv.Key)] = true
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != leases || seen[late] {
		t.Fatalf("listed %d keys (the one written during the listing: %v), want %d without it", len(seen), seen[late], leases)
	}
	resp, err := cli.Get(ctxT(t), late)
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].ModRevision <= rev {
		t.Fatalf("key written during the listing: %v, %v; want it after revision %d", resp, err, rev)
	}
}
