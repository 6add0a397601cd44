package etcdstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

// maxTries bounds Acquire's optimistic retries. Every retry follows a write
// by another node, so running out means heavy, sustained contention.
const maxTries = 10

// entry is one listed subnet key.
type entry struct {
	key       string       // full etcd key
	v4, v6    netip.Prefix // from the key
	attrs     lease.Attrs  // valid when ok
	ok        bool         // the value parsed
	leaseID   int64        // 0 for a reservation
	createRev int64
	modRev    int64
}

// snapshot is the subnet keys at one revision.
type snapshot struct {
	entries        []entry
	taken4, taken6 map[netip.Prefix]bool
}

// scan parses a listing. A key whose value does not parse still takes its
// subnets: someone wrote it, and handing them out again could collide.
func (s *Store) scan(kvs []*mvccpb.KeyValue) snapshot {
	snap := snapshot{taken4: map[netip.Prefix]bool{}, taken6: map[netip.Prefix]bool{}}
	for _, kv := range kvs {
		key := string(kv.Key)
		v4, v6, err := lease.ParseKey(strings.TrimPrefix(key, s.subnets))
		if err != nil {
			s.log.Warn("ignoring unparsable subnet key", "key", lease.Clip(key), "err", lease.Clip(err.Error()))
			continue
		}
		snap.taken4[v4], snap.taken6[v6] = true, true
		e := entry{key: key, v4: v4, v6: v6, leaseID: kv.Lease, createRev: kv.CreateRevision, modRev: kv.ModRevision}
		if e.attrs, err = lease.UnmarshalAttrs(kv.Value); err != nil {
			s.log.Warn("ignoring unparsable lease value; its subnet stays taken", "key", lease.Clip(key), "err", err)
		} else {
			e.ok = true
		}
		snap.entries = append(snap.entries, e)
	}
	return snap
}

// inNetwork reports whether e's subnets are exactly what n hands out: one
// per enabled family, each inside its pool.
func inNetwork(n *config.Network, e *entry) bool {
	fits := func(enabled bool, pool func(*config.Network) lease.Pool, p netip.Prefix) bool {
		if !enabled {
			return !p.IsValid()
		}
		return pool(n).Contains(p)
	}
	return fits(n.EnableIPv4, lease.PoolV4, e.v4) && fits(n.EnableIPv6, lease.PoolV6, e.v6)
}

// ErrIPv6Only is CheckNetwork's refusal of a network without IPv4.
var ErrIPv6Only = &config.FieldError{Field: "EnableIPv4", Value: "false",
	Reason: "an IPv6-only network needs the Kubernetes store (--kube-subnet-mgr), as in flannel: " +
		"flannel's etcd keys need an IPv4 subnet, and a flannel node watching the store resets its lease set " +
		"(and drops every route) on a key it cannot parse"}

// CheckNetwork refuses what the etcd store cannot hold without breaking a
// flannel node that reads the same keys: a network without IPv4.
func CheckNetwork(n *config.Network) error {
	if n != nil && !n.EnableIPv4 {
		return ErrIPv6Only
	}
	return nil
}

// Acquire implements lease.Store. See the package comment for the layout.
func (s *Store) Acquire(ctx context.Context, n *config.Network, attrs lease.Attrs, hint lease.Hint) (lease.Lease, error) {
	if err := CheckNetwork(n); err != nil {
		return lease.Lease{}, fmt.Errorf("acquire lease: %w", err)
	}
	val, err := lease.MarshalAttrs(attrs)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("acquire lease: %w", err)
	}
	a := &acquisition{s: s, n: n, attrs: attrs, val: string(val), hint: hint,
		rnd: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
	defer a.release()

	resp, err := s.cli.Get(ctx, s.subnets, clientv3.WithPrefix())
	if err != nil {
		return lease.Lease{}, fmt.Errorf("acquire lease: list %s: %w", s.subnets, err)
	}
	kvs := resp.Kvs
	for try := range maxTries {
		if try > 0 {
			// Spread retries so nodes that collided do not collide again.
			d := time.Duration(a.rnd.Int64N(int64(10*time.Millisecond) * int64(try)))
			select {
			case <-ctx.Done():
				return lease.Lease{}, fmt.Errorf("acquire lease: %w", ctx.Err())
			case <-time.After(d):
			}
		}
		l, done, next, err := a.try(ctx, s.scan(kvs))
		if err != nil || done {
			return l, err
		}
		kvs = next
	}
	return lease.Lease{}, fmt.Errorf("acquire lease: subnets still contended after %d tries", maxTries)
}

// acquisition is the state of one Acquire call.
type acquisition struct {
	s     *Store
	n     *config.Network
	attrs lease.Attrs
	val   string
	hint  lease.Hint
	rnd   *rand.Rand

	grant    clientv3.LeaseID // granted at most once per call
	grantTTL int64
	used     bool // grant is attached to our key
}

// try makes one attempt on a listing. It returns done, or the fresh listing
// to retry with after losing a race.
func (a *acquisition) try(ctx context.Context, snap snapshot) (l lease.Lease, done bool, next []*mvccpb.KeyValue, err error) {
	if mine := a.mine(ctx, &snap); mine != nil {
		return a.reuse(ctx, mine)
	}
	v4, err := a.choose(a.n.EnableIPv4, "IPv4", lease.PoolV4(a.n), a.n.SubnetMin, a.n.SubnetMax, a.n.SubnetLen, a.hint.Subnet, snap.taken4)
	if err != nil {
		return lease.Lease{}, false, nil, err
	}
	v6, err := a.choose(a.n.EnableIPv6, "IPv6", lease.PoolV6(a.n), a.n.IPv6SubnetMin, a.n.IPv6SubnetMax, a.n.IPv6SubnetLen, a.hint.IPv6Subnet, snap.taken6)
	if err != nil {
		return lease.Lease{}, false, nil, err
	}
	return a.create(ctx, v4, v6)
}

// mine finds our lease or reservation in the current network. Our other
// leases are deleted so that no subnet is held twice and no other node
// sees two leases with our VtepMAC: those outside the network (the config
// changed), and duplicates inside it (a reservation made for a node that
// already held a lease). Our reservations are left to the operator.
func (a *acquisition) mine(ctx context.Context, snap *snapshot) *entry {
	var best *entry
	var ours []*entry
	for i := range snap.entries {
		e := &snap.entries[i]
		if !e.ok || !lease.SameNode(a.attrs, e.attrs) {
			continue
		}
		if !inNetwork(a.n, e) {
			a.dropStale(ctx, snap, e, "outside the current network")
			continue
		}
		ours = append(ours, e)
		// Prefer a reservation, then the hinted subnet.
		if best == nil || (e.leaseID == 0 && best.leaseID != 0) ||
			((e.leaseID == 0) == (best.leaseID == 0) && e.v4 == a.hint.Subnet && e.v6 == a.hint.IPv6Subnet) {
			best = e
		}
	}
	for _, e := range ours {
		if e != best {
			a.dropStale(ctx, snap, e, "a duplicate of "+best.key)
		}
	}
	return best
}

// dropStale deletes our lease e (never a reservation), guarded by its
// ModRevision so that a concurrent write wins, and frees its subnets.
func (a *acquisition) dropStale(ctx context.Context, snap *snapshot, e *entry, why string) {
	if e.leaseID == 0 {
		a.s.log.Warn("our reservation is "+why+"; leaving it", "key", e.key)
		return
	}
	resp, err := a.s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(e.key), "=", e.modRev)).
		Then(clientv3.OpDelete(e.key)).Commit()
	if err != nil {
		a.s.log.Warn("could not delete our lease "+why, "key", e.key, "err", err)
		return
	}
	if resp.Succeeded {
		a.s.log.Info("deleted our lease "+why, "key", e.key)
		// Free for the hint: on an upgrade to dual stack the old IPv4 subnet
		// is the one to keep.
		delete(snap.taken4, e.v4)
		delete(snap.taken6, e.v6)
	}
}

// reuse takes over our existing key: a reservation keeps no TTL, a lease is
// re-bound to a fresh etcd lease. The ModRevision guard loses to any write
// made since the listing.
func (a *acquisition) reuse(ctx context.Context, e *entry) (lease.Lease, bool, []*mvccpb.KeyValue, error) {
	l := lease.Lease{Subnet: e.v4, IPv6Subnet: e.v6, Attrs: a.attrs}
	var put clientv3.Op
	if e.leaseID == 0 {
		if e.attrs.Equal(a.attrs) {
			return l, true, nil, nil
		}
		put = clientv3.OpPut(e.key, a.val)
	} else {
		id, ttl, err := a.grantOnce(ctx)
		if err != nil {
			return lease.Lease{}, false, nil, err
		}
		put = clientv3.OpPut(e.key, a.val, clientv3.WithLease(id))
		l.Expiration = time.Now().Add(time.Duration(ttl) * time.Second)
	}
	resp, err := a.s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(e.key), "=", e.modRev)).
		Then(put).
		Else(clientv3.OpGet(a.s.subnets, clientv3.WithPrefix())).Commit()
	if err != nil {
		return lease.Lease{}, false, nil, fmt.Errorf("acquire lease: renew %s: %w", e.key, err)
	}
	if !resp.Succeeded {
		return lease.Lease{}, false, resp.Responses[0].GetResponseRange().Kvs, nil
	}
	a.used = a.used || e.leaseID != 0
	a.s.log.Debug("reusing lease", "key", e.key, "reservation", e.leaseID == 0)
	if e.leaseID != 0 && clientv3.LeaseID(e.leaseID) != a.grant {
		a.revokeOrphan(ctx, clientv3.LeaseID(e.leaseID))
	}
	return l, true, nil, nil
}

// revokeOrphan revokes the etcd lease our key was bound to before reuse
// moved it to a fresh one, unless some key still uses it: left alone it
// lives out its TTL, one per agent restart (issue 11 counted 49).
func (a *acquisition) revokeOrphan(ctx context.Context, id clientv3.LeaseID) {
	ttl, err := a.s.cli.TimeToLive(ctx, id, clientv3.WithAttachedKeys())
	switch {
	case err != nil || ttl.TTL < 0:
		return // gone already, or unknown: nothing to leak
	case len(ttl.Keys) > 0:
		a.s.log.Debug("previous etcd lease still holds keys; leaving it", "id", fmt.Sprintf("%x", int64(id)), "keys", len(ttl.Keys))
		return
	}
	if _, err := a.s.cli.Revoke(ctx, id); err != nil {
		a.s.log.Debug("could not revoke the previous etcd lease", "id", fmt.Sprintf("%x", int64(id)), "err", err)
		return
	}
	a.s.log.Debug("revoked the previous etcd lease", "id", fmt.Sprintf("%x", int64(id)))
}

// choose picks a subnet of one family: the hint if it is in the pool and
// free, else a random free one.
func (a *acquisition) choose(enabled bool, family string, pool lease.Pool, lo, hi netip.Addr, bits int,
	hint netip.Prefix, taken map[netip.Prefix]bool) (netip.Prefix, error) {
	if !enabled {
		return netip.Prefix{}, nil
	}
	if pool.Contains(hint) && !taken[hint] {
		return hint, nil
	}
	p, err := pool.Pick(a.rnd, func(p netip.Prefix) bool { return taken[p] })
	if err != nil {
		keys := "SubnetMin to SubnetMax"
		if family == "IPv6" {
			keys = "IPv6SubnetMin to IPv6SubnetMax"
		}
		return netip.Prefix{}, fmt.Errorf("acquire lease: %s pool %s/%d to %s/%d (%s: %d subnets, all taken): %w",
			family, lo, bits, hi, bits, keys, pool.Size(), err)
	}
	return p, nil
}

// create claims a new key. The transaction makes the key itself atomic; a
// key naming a different combination may still share one of our subnets
// (dual stack, or a node on an older config), so the older claim wins and
// the younger one, seen in the same transaction's listing, backs off.
func (a *acquisition) create(ctx context.Context, v4, v6 netip.Prefix) (lease.Lease, bool, []*mvccpb.KeyValue, error) {
	id, ttl, err := a.grantOnce(ctx)
	if err != nil {
		return lease.Lease{}, false, nil, err
	}
	key := a.s.subnets + lease.Key(v4, v6)
	list := clientv3.OpGet(a.s.subnets, clientv3.WithPrefix())
	resp, err := a.s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, a.val, clientv3.WithLease(id)), list).
		Else(list).Commit()
	if err != nil {
		return lease.Lease{}, false, nil, fmt.Errorf("acquire lease: create %s: %w", key, err)
	}
	if !resp.Succeeded {
		return lease.Lease{}, false, resp.Responses[0].GetResponseRange().Kvs, nil
	}
	rev := resp.Header.Revision
	kvs := resp.Responses[1].GetResponseRange().Kvs
	if rival := a.olderClaim(kvs, key, v4, v6, rev); rival != "" {
		a.s.log.Debug("lost a subnet race; retrying", "key", key, "older", rival)
		if _, err := a.s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(clientv3.OpDelete(key)).Commit(); err != nil {
			return lease.Lease{}, false, nil, fmt.Errorf("acquire lease: withdraw %s: %w", key, err)
		}
		return lease.Lease{}, false, without(kvs, key), nil
	}
	a.used = true
	a.s.log.Debug("created lease", "key", key)
	return lease.Lease{Subnet: v4, IPv6Subnet: v6, Attrs: a.attrs,
		Expiration: time.Now().Add(time.Duration(ttl) * time.Second)}, true, nil, nil
}

// olderClaim names a key other than ours that holds v4 or v6 and was
// created before rev, or returns "".
func (a *acquisition) olderClaim(kvs []*mvccpb.KeyValue, key string, v4, v6 netip.Prefix, rev int64) string {
	for _, kv := range kvs {
		if string(kv.Key) == key || kv.CreateRevision >= rev {
			continue
		}
		o4, o6, err := lease.ParseKey(strings.TrimPrefix(string(kv.Key), a.s.subnets))
		if err != nil {
			continue
		}
		if (v4.IsValid() && o4 == v4) || (v6.IsValid() && o6 == v6) {
			return string(kv.Key)
		}
	}
	return ""
}

func without(kvs []*mvccpb.KeyValue, key string) []*mvccpb.KeyValue {
	out := kvs[:0:0]
	for _, kv := range kvs {
		if string(kv.Key) != key {
			out = append(out, kv)
		}
	}
	return out
}

// grantOnce grants the etcd lease for this call on first use.
func (a *acquisition) grantOnce(ctx context.Context) (clientv3.LeaseID, int64, error) {
	if a.grant == 0 {
		resp, err := a.s.cli.Grant(ctx, a.s.ttlSeconds())
		if err != nil {
			return 0, 0, fmt.Errorf("acquire lease: grant etcd lease: %w", err)
		}
		a.grant, a.grantTTL = resp.ID, resp.TTL
	}
	return a.grant, a.grantTTL, nil
}

// release revokes a grant that no key ended up using, so failed attempts do
// not leave etcd leases behind for a day.
func (a *acquisition) release() {
	if a.grant == 0 || a.used {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.s.cli.Revoke(ctx, a.grant); err != nil {
		a.s.log.Debug("could not revoke unused etcd lease", "id", fmt.Sprintf("%x", a.grant), "err", err)
	}
}
