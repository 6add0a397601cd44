package daemon

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/netlinkx/nstest"
	"github.com/weft-net/weft/internal/syncbuf"
)

func blackholes(t *testing.T, h *netlinkx.Handle) []netip.Prefix {
	t.Helper()
	ps, err := h.BlackholeList(netlinkx.FamilyAll)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// TestBlackholeKeeper runs the keeper against a test namespace: it adds
// the routes, puts back a deleted one within a period, follows a lease
// that moves, leaves other blackholes alone, and stays behind a bridge
// holding the subnet.
func TestBlackholeKeeper(t *testing.T) {
	n, peer := nstest.New(t), nstest.New(t)
	logs := &syncbuf.Buffer{}
	const period = 200 * time.Millisecond
	k := newBlackholeKeeper(n.H, period, slog.New(slog.NewTextHandler(logs, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { k.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("keeper log:\n%s", logs.String())
		}
	})

	v4, v6 := netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")
	foreign := netip.MustParsePrefix("10.9.0.0/16")
	if err := n.H.BlackholeAdd(foreign); err != nil {
		t.Fatal(err)
	}
	has := func(want ...netip.Prefix) func() bool {
		return func() bool {
			got := blackholes(t, n.H)
			slices.SortFunc(got, netip.Prefix.Compare)
			slices.SortFunc(want, netip.Prefix.Compare)
			return slices.Equal(got, want)
		}
	}
	k.Set([]netip.Prefix{v4, v6})
	waitFor(t, "both blackholes", 5*time.Second, has(foreign, v4, v6))

	if err := n.H.BlackholeDel(v4); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	waitFor(t, "the deleted blackhole back", 5*time.Second, has(foreign, v4, v6))
	// One period, and slack for a loaded machine.
	if took := time.Since(deleted); took > period+time.Second {
		t.Errorf("blackhole back after %s, want within about one period (%s)", took, period)
	}
	if !strings.Contains(logs.String(), "blackhole route was missing; added again") {
		t.Errorf("repair not logged:\n%s", logs.String())
	}

	// The lease moves: the old subnet's blackhole goes.
	moved := netip.MustParsePrefix("10.244.7.0/24")
	k.Set([]netip.Prefix{moved})
	waitFor(t, "the moved lease's blackhole only", 5*time.Second, has(foreign, moved))

	// A bridge-like interface holding the subnet: the blackhole goes in
	// beside its route as the fallback, and the pods stay reachable.
	held := netip.MustParsePrefix("10.244.8.0/24")
	nstest.Veth(t, n, "br0", netip.MustParsePrefix("10.244.8.1/24"), peer, "eth0", netip.MustParsePrefix("10.244.8.2/24"))
	k.Set([]netip.Prefix{held})
	waitFor(t, "the blackhole beside the bridge's route", 5*time.Second, has(foreign, held))
	br0, err := n.H.LinkByName("br0")
	if err != nil {
		t.Fatal(err)
	}
	if r, err := n.H.RouteGet(netip.MustParseAddr("10.244.8.2")); err != nil || r.LinkIndex != br0.Attrs().Index {
		t.Errorf("route to a pod beside the blackhole: %+v, %v; want via br0", r, err)
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", logs.String())
	}
}

// The pod bridge's route to our subnet, replaced by a route elsewhere and
// then gone (issue 11), comes back; a bridge with it in place is left
// alone, and so is a node without a bridge for the subnet.
func TestKeepBridgeRoute(t *testing.T) {
	n := nstest.New(t)
	own := netip.MustParsePrefix("10.244.5.0/24")
	if did, err := keepBridgeRoute(n.H, own); err != nil || did != "" {
		t.Fatalf("no bridge: %q, %v", did, err)
	}
	la := netlinkx.NewLinkAttrs()
	la.Name = "cni0"
	if err := n.H.LinkAdd(&netlinkx.Bridge{LinkAttrs: la}); err != nil {
		t.Fatal(err)
	}
	br := n.Link(t, "cni0")
	if err := n.H.AddrReplace(br, netip.MustParsePrefix("10.244.5.1/24")); err != nil {
		t.Fatal(err)
	}
	if err := n.H.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	if did, err := keepBridgeRoute(n.H, own); err != nil || did != "" {
		t.Fatalf("route in place: %q, %v", did, err)
	}
	if err := n.H.RouteDel(netlinkx.Route{Dst: own, LinkIndex: br.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
	did, err := keepBridgeRoute(n.H, own)
	if err != nil || !strings.Contains(did, "10.244.5.0/24 dev cni0") {
		t.Fatalf("route deleted: %q, %v", did, err)
	}
	if r, err := n.H.RouteGet(netip.MustParseAddr("10.244.5.9")); err != nil || r.LinkIndex != br.Attrs().Index {
		t.Errorf("a pod's address now goes %+v, %v; want dev cni0", r, err)
	}
}
