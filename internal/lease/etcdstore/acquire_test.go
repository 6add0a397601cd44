package etcdstore

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/etcdtest"
	"github.com/weft-net/weft/internal/lease"
)

const net16 = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`

func TestNetworkConfig(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, _ := newStore(t, cli, time.Hour)
	ctx := ctxT(t)
	if _, err := s.NetworkConfig(ctx); !errors.Is(err, lease.ErrNoConfig) {
		t.Fatalf("NetworkConfig on an empty store: %v, want ErrNoConfig", err)
	}
	if _, err := cli.Put(ctx, "/coreos.com/network/config", net16); err != nil {
		t.Fatal(err)
	}
	got, err := s.NetworkConfig(ctx)
	if err != nil || string(got) != net16 {
		t.Fatalf("NetworkConfig = %q, %v; want %q", got, err, net16)
	}
	// A custom prefix reads its own key only.
	other := New(cli, Options{Prefix: "/weft/net/"})
	if _, err := other.NetworkConfig(ctx); !errors.Is(err, lease.ErrNoConfig) {
		t.Fatalf("NetworkConfig under another prefix: %v, want ErrNoConfig", err)
	}
}

// The bytes flannel writes and reads: any difference breaks a mixed cluster.
func TestGoldenLayout(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, _ := newStore(t, cli, time.Hour)
	ctx := ctxT(t)

	l, err := s.Acquire(ctx, network(t, net16), vxlanAttrs("192.0.2.3", "c6:d2:32:6f:8f:44"),
		lease.Hint{Subnet: netip.MustParsePrefix("10.244.7.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	const key = "/coreos.com/network/subnets/10.244.7.0-24"
	const want = `{"PublicIP":"192.0.2.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`
	resp, err := cli.Get(ctx, "/coreos.com/network/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Key) != key || string(resp.Kvs[0].Value) != want {
		for _, kv := range resp.Kvs {
			t.Logf("%s = %s", kv.Key, kv.Value)
		}
		t.Fatalf("store holds the above, want exactly %s = %s", key, want)
	}
	if s.LeaseKey(l) != key {
		t.Errorf("LeaseKey = %s, want %s", s.LeaseKey(l), key)
	}
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	if err != nil || ttl.GrantedTTL != 3600 || ttl.TTL < 3590 {
		t.Fatalf("etcd lease of the key: %+v, %v; want granted 3600s", ttl, err)
	}
	if d := time.Until(l.Expiration); d < 59*time.Minute || d > time.Hour+time.Second {
		t.Errorf("Expiration in %v, want about 1h", d)
	}

	// Dual stack: one key for both subnets, both public addresses.
	dual := network(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{"Type":"vxlan"}}`)
	a := vxlanAttrs("192.0.2.4", "c6:d2:32:6f:8f:45")
	v6 := netip.MustParseAddr("2001:db8::4")
	a.PublicIPv6 = &v6
	a.BackendV6Data = []byte(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:46"}`)
	l, err = s.Acquire(ctx, dual, a, lease.Hint{
		Subnet: netip.MustParsePrefix("10.244.8.0/24"), IPv6Subnet: netip.MustParsePrefix("fd00:0:0:8::/64")})
	if err != nil {
		t.Fatal(err)
	}
	const dualKey = "/coreos.com/network/subnets/10.244.8.0-24&fd00:0:0:8::-64"
	const dualWant = `{"PublicIP":"192.0.2.4","PublicIPv6":"2001:db8::4","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:46"}}`
	resp, err = cli.Get(ctx, dualKey)
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != dualWant {
		t.Fatalf("dual-stack key %s: %v %v, want %s", dualKey, resp.Kvs, err, dualWant)
	}
	if s.LeaseKey(l) != dualKey {
		t.Errorf("LeaseKey = %s, want %s", s.LeaseKey(l), dualKey)
	}
}

func TestAcquireReusesByPublicIP(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, _ := newStore(t, cli, time.Hour)
	ctx := ctxT(t)
	n := network(t, net16)

	first, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.1", "c6:d2:32:6f:8f:01"), lease.Hint{})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := cli.Get(ctx, s.LeaseKey(first))
	other, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.2", "c6:d2:32:6f:8f:02"), lease.Hint{})
	if err != nil {
		t.Fatal(err)
	}
	if other.Subnet == first.Subnet {
		t.Fatalf("two nodes got %s", first.Subnet)
	}
	// Restarted with a new VTEP MAC and a stale hint: same subnet, new value,
	// fresh etcd lease.
	again, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.1", "c6:d2:32:6f:8f:99"),
		lease.Hint{Subnet: netip.MustParsePrefix("10.244.200.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	if again.Subnet != first.Subnet {
		t.Fatalf("re-acquire got %s, want the node's existing %s", again.Subnet, first.Subnet)
	}
	after, _ := cli.Get(ctx, s.LeaseKey(first))
	if !strings.Contains(string(after.Kvs[0].Value), "c6:d2:32:6f:8f:99") {
		t.Errorf("value not updated: %s", after.Kvs[0].Value)
	}
	if after.Kvs[0].Lease == before.Kvs[0].Lease || after.Kvs[0].Lease == 0 {
		t.Errorf("etcd lease %x -> %x, want a fresh one", before.Kvs[0].Lease, after.Kvs[0].Lease)
	}
	if n := count(t, cli, s); n != 2 {
		t.Errorf("store holds %d leases, want 2", n)
	}
}

func TestAcquireHint(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, _ := newStore(t, cli, time.Hour)
	ctx := ctxT(t)
	n := network(t, net16)
	hint := lease.Hint{Subnet: netip.MustParsePrefix("10.244.42.0/24")}

	l, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.1", "c6:d2:32:6f:8f:01"), hint)
	if err != nil || l.Subnet != hint.Subnet {
		t.Fatalf("Acquire with a free hint = %s, %v; want %s", l.Subnet, err, hint.Subnet)
	}
	// Taken by someone else: not given twice.
	l2, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.2", "c6:d2:32:6f:8f:02"), hint)
	if err != nil || l2.Subnet == hint.Subnet || !n.Network.Contains(l2.Subnet.Addr()) {
		t.Fatalf("Acquire with a taken hint = %s, %v", l2.Subnet, err)
	}
	// Outside the pool (the first subnet is never handed out): ignored.
	l3, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.3", "c6:d2:32:6f:8f:03"),
		lease.Hint{Subnet: netip.MustParsePrefix("10.244.0.0/24")})
	if err != nil || l3.Subnet == netip.MustParsePrefix("10.244.0.0/24") {
		t.Fatalf("Acquire with an out-of-pool hint = %s, %v", l3.Subnet, err)
	}
}

func TestReservation(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, _ := newStore(t, cli, time.Hour)
	ctx := ctxT(t)
	// Two subnets; the operator reserved one for 192.0.2.10.
	n := network(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.3.0","SubnetMax":"10.244.4.0","Backend":{"Type":"vxlan"}}`)
	reserved := netip.MustParsePrefix("10.244.3.0/24")
	key := "/coreos.com/network/subnets/10.244.3.0-24"
	if _, err := cli.Put(ctx, key, `{"PublicIP":"192.0.2.10","PublicIPv6":null}`); err != nil {
		t.Fatal(err)
	}

	other, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.11", "c6:d2:32:6f:8f:11"), lease.Hint{Subnet: reserved})
	if err != nil || other.Subnet != netip.MustParsePrefix("10.244.4.0/24") {
		t.Fatalf("another node asking for the reserved subnet got %s, %v; want 10.244.4.0/24", other.Subnet, err)
	}
	if _, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.12", "c6:d2:32:6f:8f:12"), lease.Hint{Subnet: reserved}); !errors.Is(err, lease.ErrPoolExhausted) {
		t.Fatalf("third node: %v, want ErrPoolExhausted (the reservation is not free)", err)
	}

	owner, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.10", "c6:d2:32:6f:8f:10"), lease.Hint{})
	if err != nil || owner.Subnet != reserved {
		t.Fatalf("owner got %s, %v; want its reservation %s", owner.Subnet, err, reserved)
	}
	if !owner.Reservation() {
		t.Errorf("owner's lease expires at %v, want a reservation", owner.Expiration)
	}
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if kv := resp.Kvs[0]; kv.Lease != 0 || !strings.Contains(string(kv.Value), "c6:d2:32:6f:8f:10") {
		t.Fatalf("reservation after owner acquired: lease %x value %s; want no TTL and the owner's attrs", kv.Lease, kv.Value)
	}
	renewed, err := s.Renew(ctx, owner)
	if err != nil || !renewed.Equal(owner) || !renewed.Reservation() {
		t.Fatalf("Renew(reservation) = %+v, %v; want it unchanged", renewed, err)
	}
	// Same attrs again: nothing to write.
	rev := resp.Kvs[0].ModRevision
	if _, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.10", "c6:d2:32:6f:8f:10"), lease.Hint{}); err != nil {
		t.Fatal(err)
	}
	if resp, _ := cli.Get(ctx, key); resp.Kvs[0].ModRevision != rev {
		t.Errorf("an unchanged reservation was rewritten")
	}
}

// An operator reserves a subnet for a node that already holds a lease: the
// node moves to the reservation and deletes its lease, so that no other
// node sees two leases with its VtepMAC.
func TestReservationReplacesOwnLease(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, _ := newStore(t, cli, time.Hour)
	ctx := ctxT(t)
	n := network(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
	attrs := vxlanAttrs("192.0.2.20", "c6:d2:32:6f:8f:20")
	first, err := s.Acquire(ctx, n, attrs, lease.Hint{})
	if err != nil || first.Reservation() {
		t.Fatalf("first Acquire = %+v, %v", first, err)
	}
	reservedKey := "/coreos.com/network/subnets/10.244.200.0-24"
	if first.Subnet == netip.MustParsePrefix("10.244.200.0/24") {
		reservedKey = "/coreos.com/network/subnets/10.244.201.0-24"
	}
	if _, err := cli.Put(ctx, reservedKey, `{"PublicIP":"192.0.2.20","PublicIPv6":null}`); err != nil {
		t.Fatal(err)
	}
	again, err := s.Acquire(ctx, n, attrs, lease.Hint{Subnet: first.Subnet})
	if err != nil || !again.Reservation() || "/coreos.com/network/subnets/"+again.Key() != reservedKey {
		t.Fatalf("Acquire after the reservation = %+v, %v; want the reservation %s", again, err, reservedKey)
	}
	resp, err := cli.Get(ctx, "/coreos.com/network/subnets/"+first.Key())
	if err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("the node's old lease %s is still there (%v)", first.Key(), err)
	}
}

func TestConcurrentAcquireOnFullPool(t *testing.T) {
	n := network(t, `{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.20.0","Backend":{"Type":"vxlan"}}`)
	const nodes = 20
	begin := time.Now()
	got, errs, cli := acquireAtOnce(t, n, nodes)
	ctx := ctxT(t)
	t.Logf("%d concurrent acquires on a pool of %d: %v", nodes, nodes, time.Since(begin))
	seen := map[netip.Prefix]int{}
	for i := range nodes {
		if errs[i] != nil {
			t.Fatalf("node %d: %v", i, errs[i])
		}
		if j, dup := seen[got[i].Subnet]; dup {
			t.Fatalf("nodes %d and %d both hold %s", i, j, got[i].Subnet)
		}
		seen[got[i].Subnet] = i
	}
	s, _ := newStore(t, cli, time.Hour)
	if c := count(t, cli, s); c != nodes {
		t.Fatalf("store holds %d leases, want %d", c, nodes)
	}
	_, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.100", "c6:d2:32:6f:8f:44"), lease.Hint{})
	if !errors.Is(err, lease.ErrPoolExhausted) {
		t.Fatalf("21st node: %v, want ErrPoolExhausted", err)
	}
	if !strings.Contains(err.Error(), "10.5.1.0/24") || !strings.Contains(err.Error(), "10.5.20.0/24") {
		t.Errorf("error %q does not name the pool range", err)
	}
	// The failed attempt leaves no etcd lease behind.
	leases, err := cli.Leases(ctx)
	if err != nil || len(leases.Leases) != nodes {
		t.Errorf("etcd holds %d leases (%v), want %d", len(leases.Leases), err, nodes)
	}
}

// Two dual-stack nodes whose keys differ but share one family's subnet:
// the older claim must win even though the create transactions both
// succeed. The newer withdraws its key and moves to a free subnet of that
// family, keeping the other family's.
func TestDualStackSharedSubnetRace(t *testing.T) {
	const conf = `{"Network":"10.244.0.0/16","SubnetMin":"10.244.3.0","SubnetMax":"10.244.4.0",` +
		`"EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd00:0:0:1::","IPv6SubnetMax":"fd00:0:0:2::","Backend":{"Type":"vxlan"}}`
	for _, c := range []struct {
		name  string
		older string // the key already holding one of our subnets
		want  lease.Lease
	}{
		{"IPv4", "10.244.3.0-24&fd00:0:0:9::-64", lease.Lease{Subnet: netip.MustParsePrefix("10.244.4.0/24")}},
		{"IPv6", "10.244.9.0-24&fd00:0:0:1::-64", lease.Lease{Subnet: netip.MustParsePrefix("10.244.3.0/24"), IPv6Subnet: netip.MustParsePrefix("fd00:0:0:2::/64")}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cli := etcdtest.Start(t).Client(t)
			s, _ := newStore(t, cli, time.Hour)
			ctx := ctxT(t)
			n := network(t, conf)
			// Written after our listing would have been taken: simulate by
			// handing the acquisition a listing without it.
			older := "/coreos.com/network/subnets/" + c.older
			put(t, cli, older, `{"PublicIP":"192.0.2.9","PublicIPv6":null}`)
			const ours = "/coreos.com/network/subnets/10.244.3.0-24&fd00:0:0:1::-64"
			a := &acquisition{s: s, n: n, attrs: vxlanAttrs("192.0.2.1", "c6:d2:32:6f:8f:01"), val: `{"PublicIP":"192.0.2.1","PublicIPv6":null}`}
			defer a.release()
			_, done, next, err := a.create(ctx, netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("fd00:0:0:1::/64"))
			if err != nil || done {
				t.Fatalf("create on a subnet held under another key: done=%v err=%v; want a retry", done, err)
			}
			for _, kv := range next {
				if string(kv.Key) == ours {
					t.Errorf("retry listing still holds our withdrawn key %s", kv.Key)
				}
			}
			if resp, _ := cli.Get(ctx, ours); len(resp.Kvs) != 0 {
				t.Fatalf("withdrawn key still in the store")
			}
			if resp, _ := cli.Get(ctx, older); len(resp.Kvs) != 1 {
				t.Fatalf("the older claim %s is gone", older)
			}
			// The real call then settles on the free subnet.
			l, err := s.Acquire(ctx, n, a.attrs, lease.Hint{Subnet: netip.MustParsePrefix("10.244.3.0/24"), IPv6Subnet: netip.MustParsePrefix("fd00:0:0:1::/64")})
			if err != nil || l.Subnet != c.want.Subnet || c.want.IPv6Subnet.IsValid() && l.IPv6Subnet != c.want.IPv6Subnet ||
				l.IPv6Subnet.Overlaps(netip.MustParsePrefix("fd00:0:0:9::/64")) {
				t.Fatalf("Acquire = %s %s, %v; want %s %s", l.Subnet, l.IPv6Subnet, err, c.want.Subnet, c.want.IPv6Subnet)
			}
			if n := count(t, cli, s); n != 2 {
				t.Errorf("store holds %d keys, want 2: the older claim and ours", n)
			}
		})
	}
}

// Dual-stack nodes racing for a pool whose IPv6 side is the smaller: every
// winner holds its own subnet in both families, and the one node too many
// is told the IPv6 range is full.
func TestConcurrentDualStackAcquireOnFullIPv6Pool(t *testing.T) {
	n := network(t, `{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.12.0",`+
		`"EnableIPv6":true,"IPv6Network":"fd00:5::/56","IPv6SubnetMin":"fd00:5:0:1::","IPv6SubnetMax":"fd00:5:0:8::","Backend":{"Type":"vxlan"}}`)
	const free, nodes = 8, 9
	got, errs, cli := acquireAtOnce(t, n, nodes)
	ctx := ctxT(t)
	seen4, seen6 := map[netip.Prefix]int{}, map[netip.Prefix]int{}
	var failed []int
	for i := range nodes {
		if errs[i] != nil {
			failed = append(failed, i)
			if !errors.Is(errs[i], lease.ErrPoolExhausted) {
				t.Errorf("node %d: %v, want ErrPoolExhausted", i, errs[i])
			}
			for _, want := range []string{"IPv6 pool", "fd00:5:0:1::/64", "fd00:5:0:8::/64", "IPv6SubnetMin to IPv6SubnetMax"} {
				if !strings.Contains(errs[i].Error(), want) {
					t.Errorf("node %d: error %q does not contain %q", i, errs[i], want)
				}
			}
			continue
		}
		if !lease.PoolV4(n).Contains(got[i].Subnet) || !lease.PoolV6(n).Contains(got[i].IPv6Subnet) {
			t.Errorf("node %d holds %s %s, outside the pools", i, got[i].Subnet, got[i].IPv6Subnet)
		}
		if j, dup := seen4[got[i].Subnet]; dup {
			t.Errorf("nodes %d and %d both hold %s", i, j, got[i].Subnet)
		}
		if j, dup := seen6[got[i].IPv6Subnet]; dup {
			t.Errorf("nodes %d and %d both hold %s", i, j, got[i].IPv6Subnet)
		}
		seen4[got[i].Subnet], seen6[got[i].IPv6Subnet] = i, i
	}
	if len(failed) != nodes-free {
		t.Fatalf("nodes %v failed, want exactly %d of %d to fail on a pool of %d", failed, nodes-free, nodes, free)
	}
	s, _ := newStore(t, cli, time.Hour)
	if c := count(t, cli, s); c != free {
		t.Errorf("store holds %d leases, want %d", c, free)
	}
	leases, err := cli.Leases(ctx)
	if err != nil || len(leases.Leases) != free {
		t.Errorf("etcd holds %d leases (%v), want %d", len(leases.Leases), err, free)
	}
}

func TestAcquireDeletesOurLeaseOutsideNetwork(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, _ := newStore(t, cli, time.Hour)
	ctx := ctxT(t)
	me := vxlanAttrs("192.0.2.1", "c6:d2:32:6f:8f:01")
	old, err := s.Acquire(ctx, network(t, net16), me, lease.Hint{Subnet: netip.MustParsePrefix("10.244.5.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	// The network moved to dual stack: the IPv4 subnet stays ours (the hint
	// comes from subnet.env), under a new key with an IPv6 subnet.
	dual := network(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{"Type":"vxlan"}}`)
	l, err := s.Acquire(ctx, dual, me, lease.Hint{Subnet: old.Subnet})
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet != old.Subnet || !l.IPv6Subnet.IsValid() {
		t.Fatalf("after the move to dual stack got %s %s, want %s plus an IPv6 subnet", l.Subnet, l.IPv6Subnet, old.Subnet)
	}
	if resp, _ := cli.Get(ctx, s.LeaseKey(old)); len(resp.Kvs) != 0 {
		t.Errorf("old single-stack key %s still present", s.LeaseKey(old))
	}
	if c := count(t, cli, s); c != 1 {
		t.Errorf("store holds %d leases, want 1", c)
	}
}

func TestRenew(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, _ := newStore(t, cli, 3*time.Second)
	ctx := ctxT(t)
	n := network(t, net16)
	l, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.1", "c6:d2:32:6f:8f:01"), lease.Hint{})
	if err != nil {
		t.Fatal(err)
	}
	// Renewing every 1.5 s keeps a 3 s lease for 6 s.
	for range 4 {
		time.Sleep(1500 * time.Millisecond)
		prev := l.Expiration
		if l, err = s.Renew(ctx, l); err != nil {
			t.Fatalf("Renew: %v", err)
		}
		if !l.Expiration.After(prev) {
			t.Fatalf("Renew moved expiration from %v to %v", prev, l.Expiration)
		}
	}
	if resp, _ := cli.Get(ctx, s.LeaseKey(l)); len(resp.Kvs) != 1 {
		t.Fatal("renewed lease is gone")
	}

	// Deleted: Renew fails, and the agent acquires again.
	if _, err := cli.Delete(ctx, s.LeaseKey(l)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Renew(ctx, l); err == nil || !strings.Contains(err.Error(), "gone") {
		t.Fatalf("Renew of a deleted lease: %v, want an error", err)
	}
	// Taken by another node in the meantime: Renew must not extend theirs.
	if _, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.2", "c6:d2:32:6f:8f:02"), lease.Hint{Subnet: l.Subnet}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Renew(ctx, l); err == nil || !strings.Contains(err.Error(), "192.0.2.2") {
		t.Fatalf("Renew of a lease now held by another node: %v, want an error", err)
	}
}

func TestAcquireIgnoresGarbage(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, logs := newStore(t, cli, time.Hour)
	ctx := ctxT(t)
	n := network(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.3.0","SubnetMax":"10.244.4.0","Backend":{"Type":"vxlan"}}`)
	put(t, cli, "/coreos.com/network/subnets/10.244.3.0-24", `not json`)
	put(t, cli, "/coreos.com/network/subnets/bogus", `{"PublicIP":"192.0.2.1","PublicIPv6":null}`)

	// The garbage names no node, so it is nobody's to reuse, but its subnet
	// is not handed out either.
	l, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.1", "c6:d2:32:6f:8f:01"), lease.Hint{Subnet: netip.MustParsePrefix("10.244.3.0/24")})
	if err != nil || l.Subnet != netip.MustParsePrefix("10.244.4.0/24") {
		t.Fatalf("Acquire next to garbage = %s, %v; want 10.244.4.0/24", l.Subnet, err)
	}
	if _, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.2", "c6:d2:32:6f:8f:02"), lease.Hint{}); !errors.Is(err, lease.ErrPoolExhausted) {
		t.Fatalf("second node: %v, want ErrPoolExhausted", err)
	}
	for _, k := range []string{"10.244.3.0-24", "bogus"} {
		if logs.find("level=WARN", k) == "" {
			t.Errorf("no warning naming key %s", k)
		}
	}
}

func put(t testing.TB, cli *clientv3.Client, key, val string, opts ...clientv3.OpOption) {
	t.Helper()
	if _, err := cli.Put(context.Background(), key, val, opts...); err != nil {
		t.Fatal(err)
	}
}

func count(t testing.TB, cli *clientv3.Client, s *Store) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), s.subnets, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

// An IPv6-only network has no key flannel can parse: a flannel node
// watching the store would reset its lease set on it and drop every
// route. The store refuses it, writing nothing, with a config error.
func TestAcquireRefusesIPv6Only(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	s, _ := newStore(t, cli, time.Hour)
	ctx := ctxT(t)
	n := network(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{"Type":"vxlan"}}`)
	v6 := netip.MustParseAddr("2001:db8::1")
	a := lease.Attrs{PublicIPv6: &v6, BackendType: "vxlan", BackendV6Data: []byte(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`)}
	_, err := s.Acquire(ctx, n, a, lease.Hint{})
	var fe *config.FieldError
	if !errors.Is(err, ErrIPv6Only) || !errors.As(err, &fe) || fe.Field != "EnableIPv4" || !strings.Contains(err.Error(), "--kube-subnet-mgr") {
		t.Fatalf("Acquire in an IPv6-only network: %v, want ErrIPv6Only naming EnableIPv4 and the Kubernetes store", err)
	}
	if c := count(t, cli, s); c != 0 {
		t.Errorf("store holds %d leases after the refusal, want 0", c)
	}
}

// An agent restarting takes its key over with a fresh etcd lease; the one
// it had is revoked rather than left to live out its TTL.
func TestRestartsLeakNoEtcdLeases(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	ctx := ctxT(t)
	n := network(t, net16)
	var first lease.Lease
	for i := range 5 {
		s, _ := newStore(t, cli, time.Hour)
		l, err := s.Acquire(ctx, n, vxlanAttrs("192.0.2.3", "c6:d2:32:6f:8f:44"), lease.Hint{})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = l
		} else if l.Key() != first.Key() {
			t.Fatalf("restart %d took %s, had %s", i, l.Key(), first.Key())
		}
	}
	resp, err := cli.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Leases) != 1 {
		t.Errorf("%d etcd leases after 5 acquisitions of one key, want 1", len(resp.Leases))
	}
}

// acquireAtOnce has nodes agents (192.0.2.1, .2, …), spread over four
// clients of one etcd, call Acquire on n at the same moment, and returns
// what each got, and one of the clients.
func acquireAtOnce(t *testing.T, n *config.Network, nodes int) ([]lease.Lease, []error, *clientv3.Client) {
	t.Helper()
	srv := etcdtest.Start(t)
	clients := []*clientv3.Client{srv.Client(t), srv.Client(t), srv.Client(t), srv.Client(t)}
	ctx := ctxT(t)
	got := make([]lease.Lease, nodes)
	errs := make([]error, nodes)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range nodes {
		s, _ := newStore(t, clients[i%len(clients)], time.Hour)
		wg.Go(func() {
			<-start
			got[i], errs[i] = s.Acquire(ctx, n, vxlanAttrs(netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}).String(), "c6:d2:32:6f:8f:44"), lease.Hint{})
		})
	}
	close(start)
	wg.Wait()
	return got, errs, clients[0]
}
