package hostgw_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/backend/backendtest"
	"github.com/weft-net/weft/internal/backend/hostgw"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

var pfx = netip.MustParsePrefix

func TestThreeNodes(t *testing.T) {
	nodes := backendtest.Cluster(t, pfx("10.244.1.0/24"), pfx("10.244.2.0/24"), pfx("10.244.3.0/24"))
	nw := backendtest.Network(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`)
	ctx := context.Background()
	var bs []*hostgw.Backend
	var leases []lease.Lease
	var logs bytes.Buffer // written by one Reconcile at a time
	log := slog.New(slog.NewTextHandler(io.MultiWriter(&logs, t.Output()), nil))
	for _, n := range nodes {
		b, err := hostgw.New(n.Params(nw), n.NS.H, log)
		if err != nil {
			t.Fatal(err)
		}
		typ, data, err := b.LeaseAttrs(ctx)
		if err != nil || typ != "host-gw" || data != nil {
			t.Fatalf("LeaseAttrs = %q %s %v", typ, data, err)
		}
		own := n.Lease(typ, data)
		if pod, err := b.Configure(ctx, own); err != nil || pod.MTU != n.Ext.MTU {
			t.Fatalf("Configure = %+v, %v; want MTU %d", pod, err, n.Ext.MTU)
		}
		bs = append(bs, b)
		leases = append(leases, own)
	}
	// A node on another segment: refused with a reason, the others programmed.
	far := lease.Lease{Subnet: pfx("10.244.9.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("203.0.113.9"), BackendType: "host-gw"}}
	all := append(slices.Clone(leases), far)
	// The refusal is logged with its reason; it is not a failed reconcile,
	// or one misplaced node would make every node unready.
	for i, b := range bs {
		if err := b.Reconcile(ctx, leases[i], all, true); err != nil {
			t.Fatalf("node %d: Reconcile with a far lease: %v", i, err)
		}
		if b.Refused() != 1 {
			t.Errorf("Refused() = %d", b.Refused())
		}
	}
	if !strings.Contains(logs.String(), "203.0.113.9 is not on eth0's 192.0.2.0/24; use vxlan or DirectRouting") {
		t.Errorf("refusal not logged with its reason:\n%s", logs.String())
	}
	a := nodes[0]
	want := []netlinkx.Route{
		{Dst: pfx("10.244.2.0/24"), Gw: nodes[1].Ext.PublicIP, LinkIndex: a.Ext.Index},
		{Dst: pfx("10.244.3.0/24"), Gw: nodes[2].Ext.PublicIP, LinkIndex: a.Ext.Index},
	}
	if got := managed(t, a); !slices.Equal(got, want) {
		t.Fatalf("routes %v, want %v", got, want)
	}
	for i := range nodes {
		for j := range nodes {
			if i != j {
				if err := nodes[i].Pod.Ping(nodes[i].PodIP, nodes[j].PodIP); err != nil {
					t.Fatalf("pod %d -> pod %d: %v", i, j, err)
				}
			}
		}
	}

	// Lease of node 2 goes: incrementally, then its route is gone.
	if err := bs[0].Reconcile(ctx, leases[0], leases[:2], false); err != nil {
		t.Fatal(err)
	}
	if got := managed(t, a); !slices.Equal(got, want[:1]) {
		t.Fatalf("after removal routes %v, want %v", got, want[:1])
	}

	// Hand-made damage, repaired by a full pass; foreign routes stay.
	h := a.NS.H
	stale := netlinkx.Route{Dst: pfx("10.244.77.0/24"), Gw: nodes[2].Ext.PublicIP, LinkIndex: a.Ext.Index}
	foreign := netlinkx.Route{Dst: pfx("198.51.100.0/24"), Gw: nodes[2].Ext.PublicIP, LinkIndex: a.Ext.Index}
	for _, r := range []netlinkx.Route{stale, foreign} {
		if err := h.RouteReplace(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.RouteDel(want[0]); err != nil {
		t.Fatal(err)
	}
	if err := bs[0].Reconcile(ctx, leases[0], leases, true); err != nil {
		t.Fatal(err)
	}
	if got := managed(t, a); !slices.Equal(got, want) {
		t.Fatalf("after repair routes %v, want %v", got, want)
	}
	if !slices.Contains(backendtest.Routes(t, h, a.Ext.Index), foreign) {
		t.Fatal("a route outside the cluster network was removed")
	}
	if err := nodes[0].Pod.Ping(nodes[0].PodIP, nodes[1].PodIP); err != nil {
		t.Fatal(err)
	}

	// Update, as watch events: node 2 leaves, a far node is refused, node
	// 2 comes back with a new PublicIP's route.
	if err := bs[0].Update(ctx, leases[0], []lease.Event{{Type: lease.Removed, Lease: leases[2]}, {Type: lease.Added, Lease: far}}); err != nil {
		t.Fatal(err)
	}
	if got := managed(t, a); !slices.Equal(got, want[:1]) || bs[0].Refused() != 1 {
		t.Fatalf("after Update removing node 2: routes %v, want %v; refused %d", got, want[:1], bs[0].Refused())
	}
	if err := bs[0].Update(ctx, leases[0], []lease.Event{{Type: lease.Added, Lease: leases[2]}, {Type: lease.Removed, Lease: far}}); err != nil {
		t.Fatal(err)
	}
	if got := managed(t, a); !slices.Equal(got, want) || bs[0].Refused() != 0 {
		t.Fatalf("after Update adding node 2: routes %v, want %v; refused %d", got, want, bs[0].Refused())
	}
	if err := nodes[0].Pod.Ping(nodes[0].PodIP, nodes[2].PodIP); err != nil {
		t.Fatal(err)
	}
}

// managed lists the node's underlay routes inside 10.244.0.0/16.
func managed(t *testing.T, n *backendtest.Node) []netlinkx.Route {
	t.Helper()
	var out []netlinkx.Route
	for _, r := range backendtest.Routes(t, n.NS.H, n.Ext.Index) {
		if pfx("10.244.0.0/16").Contains(r.Dst.Addr()) {
			out = append(out, r)
		}
	}
	return out
}

// manyLeasesNode is one node on a /16 underlay, so that a thousand
// gateways are on-link, with its backend; remoteLease(i) is the i-th remote
// lease of 10.0.0.0/8, its gateway on that underlay.
func manyLeasesNode(t *testing.T) (*backendtest.Node, *hostgw.Backend) {
	t.Helper()
	n := backendtest.Cluster(t, pfx("10.255.255.0/24"))[0]
	nw := backendtest.Network(t, `{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw"}}`)
	if err := n.NS.H.AddrReplace(n.NS.Link(t, "eth0"), pfx("192.0.2.1/16")); err != nil {
		t.Fatal(err)
	}
	n.Ext.Subnet = pfx("192.0.0.0/16")
	b, err := hostgw.New(n.Params(nw), n.NS.H, backendtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	return n, b
}

func remoteLease(i int) lease.Lease {
	return lease.Lease{
		Subnet: pfx(fmt.Sprintf("10.%d.%d.0/24", 1+i/256, i%256)),
		Attrs:  lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{192, 0, byte(10 + i/250), byte(1 + i%250)}), BackendType: "host-gw"},
	}
}

func TestThousandLeases(t *testing.T) {
	n, b := manyLeasesNode(t)
	own := n.Lease("host-gw", nil)
	leases := []lease.Lease{own}
	for i := range 1001 {
		leases = append(leases, remoteLease(i))
	}
	ctx := context.Background()
	if err := b.Reconcile(ctx, own, leases[:1001], true); err != nil {
		t.Fatal(err)
	}
	if got := len(backendtest.Routes(t, n.NS.H, n.Ext.Index)); got != 1000+2 { // + 192.0.2.0/24 and 192.0.0.0/16 connected
		t.Fatalf("%d routes on eth0, want 1002", got)
	}
	dumps := n.NS.H.Dumps()
	t0 := time.Now()
	if err := b.Reconcile(ctx, own, leases, false); err != nil {
		t.Fatal(err)
	}
	t.Logf("one new lease with 1000 present, incremental: %v", time.Since(t0))
	if n.NS.H.Dumps() != dumps {
		t.Error("incremental reconcile dumped the routing table")
	}
	if got := len(backendtest.Routes(t, n.NS.H, n.Ext.Index)); got != 1001+2 {
		t.Fatalf("%d routes on eth0, want 1003", got)
	}
}

// TestReadAhead: a full pass against routes read ahead, while Update adds
// and removes leases after the read; a route deleted by hand before the
// read is repaired. The kernel ends up as the lease set says.
func TestReadAhead(t *testing.T) {
	n, b := manyLeasesNode(t)
	own := n.Lease("host-gw", nil)
	var leases []lease.Lease
	for i := range 200 {
		leases = append(leases, remoteLease(i))
	}
	ctx := context.Background()
	if err := b.Reconcile(ctx, own, append([]lease.Lease{own}, leases...), true); err != nil {
		t.Fatal(err)
	}
	gone := leases[5]
	if err := n.NS.H.RouteDel(netlinkx.Route{Dst: gone.Subnet, Gw: gone.Attrs.PublicIP, LinkIndex: n.Ext.Index}); err != nil {
		t.Fatal(err)
	}
	pass, err := b.ReadAhead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	added, removed := remoteLease(200), leases[9]
	if err := b.Update(ctx, own, []lease.Event{{Type: lease.Added, Lease: added}, {Type: lease.Removed, Lease: removed}}); err != nil {
		t.Fatal(err)
	}
	now := append(slices.Delete(slices.Clone(leases), 9, 10), added)
	if err := pass(ctx, own, append([]lease.Lease{own}, now...)); err != nil {
		t.Fatal(err)
	}
	have := map[netip.Prefix]bool{}
	for _, r := range backendtest.Routes(t, n.NS.H, n.Ext.Index) {
		have[r.Dst] = true
	}
	for _, l := range now {
		if !have[l.Subnet] {
			t.Errorf("no route to %s", l.Subnet)
		}
	}
	if have[removed.Subnet] {
		t.Errorf("the route to %s, removed after the read, is back", removed.Subnet)
	}
	if len(have) != len(now)+2 { // + the connected 192.0.2.0/24 and 192.0.0.0/16
		t.Errorf("%d routes on eth0, want %d", len(have), len(now)+2)
	}
}
