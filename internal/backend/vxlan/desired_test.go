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
	p := params()
	p.DirectRouting = true
	rnd := rand.New(rand.NewPCG(1, 2))
	randomLease := func() lease.Lease {
		sn := fmt.Sprintf("10.244.%d.0/24", rnd.IntN(12))
		pub := fmt.Sprintf("198.51.100.%d", 1+rnd.IntN(20))
		if rnd.IntN(4) == 0 {
			pub = fmt.Sprintf("192.0.2.%d", 2+rnd.IntN(5)) // on the underlay's segment: DirectRouting
		}
		data := fmt.Sprintf(`{"VNI":1,"VtepMAC":"02:00:00:00:00:%02x"}`, 1+rnd.IntN(6)) // MACs collide often
		switch rnd.IntN(10) {
		case 0:
			data = `{"VNI":2,"VtepMAC":"02:00:00:00:00:09"}`
		case 1:
			data = `not json`
		}
		return vxLease(sn, pub, data)
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
