package vxlan

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

func mac(s string) netlinkx.MAC {
	m, err := netlinkx.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func vxLease(subnet, pub, data string) lease.Lease {
	l := lease.Lease{Subnet: pfx(subnet), Attrs: lease.Attrs{PublicIP: addr(pub), BackendType: "vxlan"}}
	if data != "" {
		l.Attrs.BackendData = json.RawMessage(data)
	}
	return l
}

func params() Params {
	return Params{
		Network: pfx("10.244.0.0/16"), Own: pfx("10.244.1.0/24"), PublicIP: addr("192.0.2.1"),
		VNI: 1, Link: 7, Underlay: 2, UnderlaySubnet: pfx("192.0.2.0/24"),
	}
}

func TestBackendDataBytes(t *testing.T) {
	b, err := json.Marshal(BackendData{VNI: 1, VtepMAC: mac("c6:d2:32:6f:8f:44")})
	if err != nil || string(b) != `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}` {
		t.Fatalf("got %s, %v", b, err)
	}
}

func TestDesired(t *testing.T) {
	own := vxLease("10.244.1.0/24", "192.0.2.1", `{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}`)
	near := vxLease("10.244.2.0/24", "192.0.2.2", `{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}`)
	far := vxLease("10.244.3.0/24", "203.0.113.9", `{"VNI":1,"VtepMAC":"02:00:00:00:00:03"}`)
	nearRoute := netlinkx.Route{Dst: pfx("10.244.2.0/24"), Gw: addr("10.244.2.0"), LinkIndex: 7, OnLink: true}
	farRoute := netlinkx.Route{Dst: pfx("10.244.3.0/24"), Gw: addr("10.244.3.0"), LinkIndex: 7, OnLink: true}
	nearNeigh := netlinkx.Neigh{LinkIndex: 7, IP: addr("10.244.2.0"), MAC: mac("02:00:00:00:00:02"), State: netlinkx.NUDPermanent}
	farNeigh := netlinkx.Neigh{LinkIndex: 7, IP: addr("10.244.3.0"), MAC: mac("02:00:00:00:00:03"), State: netlinkx.NUDPermanent}
	nearFDB := netlinkx.FDB{LinkIndex: 7, MAC: mac("02:00:00:00:00:02"), Dst: addr("192.0.2.2")}
	farFDB := netlinkx.FDB{LinkIndex: 7, MAC: mac("02:00:00:00:00:03"), Dst: addr("203.0.113.9")}

	tests := []struct {
		name    string
		direct  bool
		leases  []lease.Lease
		want    State
		skipped []string // subnet: substring of the reason
	}{
		{
			name:   "vxlan, own left out, unsorted input",
			leases: []lease.Lease{far, own, near},
			want: State{
				Routes: []netlinkx.Route{nearRoute, farRoute},
				Neighs: []netlinkx.Neigh{nearNeigh, farNeigh},
				FDB:    []netlinkx.FDB{nearFDB, farFDB},
			},
		},
		{
			name:   "DirectRouting: same segment by plain route, the far one by vxlan",
			direct: true,
			leases: []lease.Lease{own, near, far},
			want: State{
				Routes: []netlinkx.Route{{Dst: pfx("10.244.2.0/24"), Gw: addr("192.0.2.2"), LinkIndex: 2}, farRoute},
				Neighs: []netlinkx.Neigh{farNeigh},
				FDB:    []netlinkx.FDB{farFDB},
			},
		},
		{
			name: "unusable leases are skipped, the rest programmed",
			leases: []lease.Lease{
				own, near,
				vxLease("10.244.4.0/24", "192.0.2.4", `{"VNI":1,"VtepMAC":`),                     // garbage
				vxLease("10.244.5.0/24", "192.0.2.5", ""),                                        // none
				vxLease("10.244.6.0/24", "192.0.2.6", `{"VNI":1}`),                               // no MAC
				vxLease("10.244.7.0/24", "192.0.2.7", `{"VNI":2,"VtepMAC":"02:00:00:00:00:07"}`), // other VNI
				vxLease("10.244.8.0/24", "192.0.2.8", `{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}`), // near's MAC
				vxLease("10.244.9.0/24", "192.0.2.1", `{"VNI":1,"VtepMAC":"02:00:00:00:00:09"}`), // our IP
				vxLease("10.245.0.0/24", "192.0.2.10", `{"VNI":1,"VtepMAC":"02:00:00:00:00:0a"}`),
				{Subnet: pfx("10.244.11.0/24"), Attrs: lease.Attrs{PublicIP: addr("192.0.2.11"), BackendType: "host-gw"}},
				{Subnet: pfx("10.244.12.0/24"), Attrs: lease.Attrs{PublicIP: addr("192.0.2.12")}}, // udp
				{Subnet: pfx("10.244.13.0/24"), Attrs: lease.Attrs{BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:00:0d"}`)}},
				vxLease("10.244.14.0/24", "192.0.2.14", `{"VNI":1,"VtepMAC":"33:33:00:00:00:01"}`),
				{IPv6Subnet: pfx("fd00::/64"), Attrs: lease.Attrs{BackendType: "vxlan"}}, // IPv6-only: silently not ours
			},
			want: State{Routes: []netlinkx.Route{nearRoute}, Neighs: []netlinkx.Neigh{nearNeigh}, FDB: []netlinkx.FDB{nearFDB}},
			skipped: []string{
				"10.244.4.0/24: BackendData",
				"10.244.5.0/24: no BackendData",
				"10.244.6.0/24: not a unicast MAC",
				"10.244.7.0/24: VNI 2 differs",
				"10.244.8.0/24: also published by lease 10.244.2.0/24",
				"10.244.9.0/24: this node's own",
				"10.244.11.0/24: backend type \"host-gw\"",
				"10.244.12.0/24: backend type \"\"",
				"10.244.13.0/24: not a usable IPv4",
				"10.244.14.0/24: not a unicast MAC",
				"10.245.0.0/24: not inside the cluster network",
			},
		},
		{name: "only own", leases: []lease.Lease{own}},
	}
	var pl Planner // shared by all cases and run twice: its memory must not change results
	for _, tc := range append(tests, tests...) {
		t.Run(tc.name, func(t *testing.T) {
			p := params()
			p.DirectRouting = tc.direct
			got, skipped := pl.Desired(p, tc.leases)
			if got2, skipped2 := Desired(p, tc.leases); !slices.Equal(got.Routes, got2.Routes) || len(skipped) != len(skipped2) {
				t.Errorf("Planner and Desired disagree")
			}
			if !slices.Equal(got.Routes, tc.want.Routes) || !slices.Equal(got.Neighs, tc.want.Neighs) || !slices.Equal(got.FDB, tc.want.FDB) {
				t.Errorf("got\n%+v\nwant\n%+v", got, tc.want)
			}
			if len(skipped) != len(tc.skipped) {
				t.Errorf("skipped %d leases, want %d: %v", len(skipped), len(tc.skipped), skipped)
			}
			for i, want := range tc.skipped {
				if i >= len(skipped) {
					break
				}
				sn, reason, _ := strings.Cut(want, ": ")
				if skipped[i].Subnet != pfx(sn) || !strings.Contains(skipped[i].Error(), reason) {
					t.Errorf("skipped[%d] = %v, want %s with %q", i, skipped[i], sn, reason)
				}
				var le *backend.LeaseError
				if !errors.As(skipped[i], &le) {
					t.Errorf("skipped[%d] is not a LeaseError", i)
				}
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func params6() Params {
	return Params{
		IPv6: true, Network: pfx("fd00:10:244::/56"), Own: pfx("fd00:10:244:1::/64"), PublicIP: addr("2001:db8::1"),
		VNI: 1, Link: 8, Underlay: 2, UnderlaySubnet: pfx("2001:db8::/64"),
	}
}

// dualLease is a dual-stack vxlan lease as a flannel node publishes it.
func dualLease(subnet, subnet6, pub, pub6, data, data6 string) lease.Lease {
	l := vxLease(subnet, pub, data)
	l.IPv6Subnet = pfx(subnet6)
	if pub6 != "" {
		l.Attrs.PublicIPv6 = ptr(addr(pub6))
	}
	if data6 != "" {
		l.Attrs.BackendV6Data = json.RawMessage(data6)
	}
	return l
}

// The IPv6 planner is the same planner over the leases' IPv6 half:
// flannel-v6.<VNI> entries from IPv6Subnet, PublicIPv6 and BackendV6Data.
func TestDesiredIPv6(t *testing.T) {
	own := dualLease("10.244.1.0/24", "fd00:10:244:1::/64", "192.0.2.1", "2001:db8::1", `{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}`, `{"VNI":1,"VtepMAC":"02:00:00:00:06:01"}`)
	near := dualLease("10.244.2.0/24", "fd00:10:244:2::/64", "192.0.2.2", "2001:db8::2", `{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}`, `{"VNI":1,"VtepMAC":"02:00:00:00:06:02"}`)
	far := dualLease("10.244.3.0/24", "fd00:10:244:3::/64", "203.0.113.9", "2001:db8:99::9", `{"VNI":1,"VtepMAC":"02:00:00:00:00:03"}`, `{"VNI":1,"VtepMAC":"02:00:00:00:06:03"}`)
	nearRoute := netlinkx.Route{Dst: pfx("fd00:10:244:2::/64"), Gw: addr("fd00:10:244:2::"), LinkIndex: 8, OnLink: true}
	farRoute := netlinkx.Route{Dst: pfx("fd00:10:244:3::/64"), Gw: addr("fd00:10:244:3::"), LinkIndex: 8, OnLink: true}
	nearNeigh := netlinkx.Neigh{LinkIndex: 8, IP: addr("fd00:10:244:2::"), MAC: mac("02:00:00:00:06:02"), State: netlinkx.NUDPermanent}
	farNeigh := netlinkx.Neigh{LinkIndex: 8, IP: addr("fd00:10:244:3::"), MAC: mac("02:00:00:00:06:03"), State: netlinkx.NUDPermanent}
	nearFDB := netlinkx.FDB{LinkIndex: 8, MAC: mac("02:00:00:00:06:02"), Dst: addr("2001:db8::2")}
	farFDB := netlinkx.FDB{LinkIndex: 8, MAC: mac("02:00:00:00:06:03"), Dst: addr("2001:db8:99::9")}

	p := params6()
	got, skipped := Desired(p, []lease.Lease{
		far, own, near,
		vxLease("10.244.4.0/24", "192.0.2.4", `{"VNI":1,"VtepMAC":"02:00:00:00:00:04"}`), // IPv4 only: not an IPv6 peer
		dualLease("10.244.5.0/24", "fd00:10:244:5::/64", "192.0.2.5", "2001:db8::5", `{"VNI":1,"VtepMAC":"02:00:00:00:00:05"}`, ""),
		dualLease("10.244.6.0/24", "fd00:10:244:6::/64", "192.0.2.6", "", `{"VNI":1,"VtepMAC":"02:00:00:00:00:06"}`, `{"VNI":1,"VtepMAC":"02:00:00:00:06:06"}`),
		dualLease("10.244.7.0/24", "fd00:10:244:7::/64", "192.0.2.7", "2001:db8::1", `{"VNI":1,"VtepMAC":"02:00:00:00:00:07"}`, `{"VNI":1,"VtepMAC":"02:00:00:00:06:07"}`),
		dualLease("10.244.8.0/24", "fd00:10:244:8::/64", "192.0.2.8", "::ffff:192.0.2.8", `{"VNI":1,"VtepMAC":"02:00:00:00:00:08"}`, `{"VNI":1,"VtepMAC":"02:00:00:00:06:08"}`),
		dualLease("10.244.9.0/24", "fd00:99::/64", "192.0.2.9", "2001:db8::9", `{"VNI":1,"VtepMAC":"02:00:00:00:00:09"}`, `{"VNI":1,"VtepMAC":"02:00:00:00:06:09"}`),
	})
	want := State{
		Routes: []netlinkx.Route{nearRoute, farRoute},
		Neighs: []netlinkx.Neigh{nearNeigh, farNeigh},
		FDB:    []netlinkx.FDB{nearFDB, farFDB},
	}
	if !slices.Equal(got.Routes, want.Routes) || !slices.Equal(got.Neighs, want.Neighs) || !slices.Equal(got.FDB, want.FDB) {
		t.Errorf("got\n%+v\nwant\n%+v", got, want)
	}
	wantSkipped := []string{
		"fd00:10:244:5::/64: BackendV6Data: no BackendData",
		"fd00:10:244:6::/64: PublicIPv6 invalid IP is not a usable IPv6",
		"fd00:10:244:7::/64: PublicIPv6 2001:db8::1 is this node's own",
		"fd00:10:244:8::/64: not a usable IPv6",
		"fd00:99::/64: not inside the cluster network fd00:10:244::/56",
	}
	if len(skipped) != len(wantSkipped) {
		t.Fatalf("skipped %v, want %d", skipped, len(wantSkipped))
	}
	for i, w := range wantSkipped {
		sn, reason, _ := strings.Cut(w, ": ")
		if skipped[i].Subnet != pfx(sn) || !strings.Contains(skipped[i].Error(), reason) {
			t.Errorf("skipped[%d] = %v, want %s with %q", i, skipped[i], sn, reason)
		}
	}

	p.DirectRouting = true
	got, _ = Desired(p, []lease.Lease{own, near, far})
	direct := []netlinkx.Route{{Dst: pfx("fd00:10:244:2::/64"), Gw: addr("2001:db8::2"), LinkIndex: 2}, farRoute}
	if !slices.Equal(got.Routes, direct) || !slices.Equal(got.Neighs, []netlinkx.Neigh{farNeigh}) || !slices.Equal(got.FDB, []netlinkx.FDB{farFDB}) {
		t.Errorf("DirectRouting: got %+v", got)
	}
}

// manyLeases returns n vxlan leases numbered from first: lease i has subnet
// 10.(1+i/256).(i%256).0/24 inside 10.0.0.0/8, its own MAC, and a PublicIP
// in 198.18.0.0/15, off any test's underlay segment.
func manyLeases(first, n int) []lease.Lease {
	out := make([]lease.Lease, n)
	for k := range out {
		i := first + k
		sn := fmt.Sprintf("10.%d.%d.0/24", 1+i/256, i%256)
		pub := fmt.Sprintf("198.%d.%d.%d", 18+i/(250*256), i/250%256, i%250+1)
		out[k] = vxLease(sn, pub, fmt.Sprintf(`{"VNI":1,"VtepMAC":"02:42:00:%02x:%02x:%02x"}`, i>>16&255, i>>8&255, i&255))
	}
	return out
}

func BenchmarkDesired1000(b *testing.B) {
	p := params()
	p.Network, p.Own = pfx("10.0.0.0/8"), pfx("10.0.0.0/24")
	leases := manyLeases(0, 1000)
	b.Run("cold", func(b *testing.B) {
		for b.Loop() {
			st, skipped := Desired(p, leases)
			if len(st.Routes) != 1000 || len(skipped) != 0 {
				b.Fatalf("%d routes, skipped %v", len(st.Routes), skipped)
			}
		}
	})
	b.Run("planner", func(b *testing.B) {
		var pl Planner
		for b.Loop() {
			st, skipped := pl.Desired(p, leases)
			if len(st.Routes) != 1000 || len(skipped) != 0 {
				b.Fatalf("%d routes, skipped %v", len(st.Routes), skipped)
			}
		}
	})
}

// kernelTables is a model of the three tables a vxlan node programs, by
// the kernel's keys.
type kernelTables struct {
	routes map[netlinkx.RouteKey]netlinkx.Route
	neighs map[netlinkx.NeighKey]netlinkx.Neigh
	fdb    map[netlinkx.FDBKey]netlinkx.FDB
}

func tablesOf(st State) kernelTables {
	k := kernelTables{map[netlinkx.RouteKey]netlinkx.Route{}, map[netlinkx.NeighKey]netlinkx.Neigh{}, map[netlinkx.FDBKey]netlinkx.FDB{}}
	k.apply(State{}, st)
	return k
}

// apply does what the backend's apply does to the kernel: Diff, then
// delete and replace by key.
func (k kernelTables) apply(before, after State) {
	applyDiff(k.routes, before.Routes, after.Routes, netlinkx.Route.Key)
	applyDiff(k.neighs, before.Neighs, after.Neighs, netlinkx.Neigh.Key)
	applyDiff(k.fdb, before.FDB, after.FDB, netlinkx.FDB.Key)
}

func applyDiff[T comparable, K comparable](m map[K]T, before, after []T, key func(T) K) {
	put, del := backend.Diff(before, after, key, nil)
	for _, e := range del {
		delete(m, key(e))
	}
	for _, e := range put {
		m[key(e)] = e
	}
}

// TestPlannerUpdate drives random event sequences (new, changed and
// removed leases, duplicate VtepMACs, bad data, DirectRouting peers)
// through Update, applies each before → after to a model of the kernel,
// and checks it against a fresh Desired of the whole set every step.
func TestPlannerUpdate(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "IPv4", true: "IPv6"}[v6], func(t *testing.T) { testPlannerUpdate(t, v6) })
	}
}

func testPlannerUpdate(t *testing.T, v6 bool) {
	p := params()
	if v6 {
		p = params6()
	}
	p.DirectRouting = true
	rnd := rand.New(rand.NewPCG(1, 2))
	randomData := func() string {
		data := fmt.Sprintf(`{"VNI":1,"VtepMAC":"02:00:00:00:00:%02x"}`, 1+rnd.IntN(6)) // MACs collide often
		switch rnd.IntN(10) {
		case 0:
			data = `{"VNI":2,"VtepMAC":"02:00:00:00:00:09"}`
		case 1:
			data = `not json`
		}
		return data
	}
	randomLease := func() lease.Lease {
		i := rnd.IntN(12)
		sn := fmt.Sprintf("10.244.%d.0/24", i)
		n := 1 + rnd.IntN(20)
		pub, pub6 := fmt.Sprintf("198.51.100.%d", n), fmt.Sprintf("2001:db8:51::%d", n)
		if rnd.IntN(4) == 0 {
			// On the underlay's segment: DirectRouting.
			n = 2 + rnd.IntN(5)
			pub, pub6 = fmt.Sprintf("192.0.2.%d", n), fmt.Sprintf("2001:db8::%d", n)
		}
		l := vxLease(sn, pub, randomData())
		if i%5 == 0 {
			return l // IPv4 only (one key per subnet, as the store keeps it): no IPv6 entries
		}
		l.IPv6Subnet = pfx(fmt.Sprintf("fd00:10:244:%x::/64", i))
		l.Attrs.PublicIPv6 = ptr(addr(pub6))
		if rnd.IntN(8) != 0 { // else no BackendV6Data, as from a node that predates it
			l.Attrs.BackendV6Data = json.RawMessage(randomData())
		}
		return l
	}
	for run := range 50 {
		var pl Planner
		set := map[string]lease.Lease{}
		st, _ := pl.Desired(p, nil)
		k := tablesOf(st)
		for step := range 40 {
			var evs []lease.Event
			for range 1 + rnd.IntN(4) {
				l := randomLease()
				if old, ok := set[l.Key()]; ok && rnd.IntN(3) == 0 {
					evs = append(evs, lease.Event{Type: lease.Removed, Lease: old})
					delete(set, l.Key())
					continue
				}
				set[l.Key()] = l
				evs = append(evs, lease.Event{Type: lease.Added, Lease: l})
			}
			before, after, verdicts := pl.Update(evs)
			k.apply(before, after)

			want, skipped := Desired(p, slices.Collect(maps.Values(set)))
			if got := tablesOf(want); !maps.Equal(k.routes, got.routes) || !maps.Equal(k.neighs, got.neighs) || !maps.Equal(k.fdb, got.fdb) {
				t.Fatalf("run %d step %d: after %v the kernel holds\n%v\n%v\n%v\nbut Desired says\n%v\n%v\n%v",
					run, step, evs, k.routes, k.neighs, k.fdb, got.routes, got.neighs, got.fdb)
			}
			for _, r := range want.Routes {
				if r.Dst.Addr().Is6() != v6 {
					t.Fatalf("run %d step %d: route %v of the other family", run, step, r)
				}
			}
			// Every lease Desired skips and Update touched has that verdict.
			skip := map[netip.Prefix]string{}
			for _, e := range skipped {
				skip[e.Subnet] = e.Err.Error()
			}
			for _, v := range verdicts {
				if got := errString(v.Err); got != skip[v.Subnet] {
					t.Fatalf("run %d step %d: verdict for %s %q, Desired says %q", run, step, v.Subnet, got, skip[v.Subnet])
				}
			}
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// BenchmarkUpdateOne5000 is the per-event cost with 5,000 nodes: one lease
// added and removed again.
func BenchmarkUpdateOne5000(b *testing.B) {
	p := params()
	p.Network, p.Own = pfx("10.0.0.0/8"), pfx("10.0.0.0/24")
	var pl Planner
	pl.Desired(p, manyLeases(0, 5000))
	more := manyLeases(5000, 1)[0]
	add := []lease.Event{{Type: lease.Added, Lease: more}}
	del := []lease.Event{{Type: lease.Removed, Lease: more}}
	for b.Loop() {
		if _, after, _ := pl.Update(add); len(after.Routes) != 1 {
			b.Fatalf("%d routes", len(after.Routes))
		}
		pl.Update(del)
	}
}
