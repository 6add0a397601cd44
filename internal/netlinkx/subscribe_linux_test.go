package netlinkx_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/netlinkx/nstest"
)

// SubscribeRoutes reports routes added and removed in its namespace only.
func TestSubscribeRoutes(t *testing.T) {
	a, b := nstest.New(t), nstest.New(t)
	under, _ := nstest.Veth(t, a, "ul0", mustPrefix("192.0.2.1/24"), b, "ul0", mustPrefix("192.0.2.2/24"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	evs, err := netlinkx.SubscribeRoutes(ctx, a.Path, func(err error) { t.Errorf("subscription: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	// A route in the other namespace must not show up.
	other := netlinkx.Route{Dst: mustPrefix("10.9.0.0/24"), Gw: mustAddr("192.0.2.1"), LinkIndex: b.Link(t, "ul0").Attrs().Index}
	if err := b.H.RouteReplace(other); err != nil {
		t.Fatal(err)
	}
	r := netlinkx.Route{Dst: mustPrefix("10.8.0.0/24"), Gw: mustAddr("192.0.2.2"), LinkIndex: under.Attrs().Index}
	before := time.Now()
	if err := a.H.RouteReplace(r); err != nil {
		t.Fatal(err)
	}
	if err := a.H.RouteDel(r); err != nil {
		t.Fatal(err)
	}
	var got []netlinkx.RouteEvent
	for len(got) < 2 {
		select {
		case ev, ok := <-evs:
			if !ok {
				t.Fatalf("subscription ended after %v", got)
			}
			if ev.Route.Dst.Addr().Is4() && ev.Route.Dst.Bits() == 24 {
				got = append(got, ev)
			}
		case <-ctx.Done():
			t.Fatalf("events so far %v: %v", got, ctx.Err())
		}
	}
	if got[0].Deleted || got[0].Route != r || !got[1].Deleted || got[1].Route.Dst != r.Dst {
		t.Errorf("events %+v, want add then delete of %s", got, r)
	}
	if got[0].At.Before(before) {
		t.Errorf("event stamped %v, before the route was added (%v)", got[0].At, before)
	}
	cancel()
	for range evs { // closed once ctx ends
	}
}

// SubscribeChanges reports, in the handle's namespace only, a route, a
// neighbour, an address and a link going away.
func TestSubscribeChanges(t *testing.T) {
	a, b := nstest.New(t), nstest.New(t)
	under, _ := nstest.Veth(t, a, "ul0", mustPrefix("192.0.2.1/24"), b, "ul0", mustPrefix("192.0.2.2/24"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	changes, err := a.H.SubscribeChanges(ctx, func(err error) { t.Errorf("subscription: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	idx := under.Attrs().Index
	if err := b.H.RouteReplace(netlinkx.Route{Dst: mustPrefix("10.9.0.0/24"), Gw: mustAddr("192.0.2.1"), LinkIndex: b.Link(t, "ul0").Attrs().Index}); err != nil {
		t.Fatal(err)
	}
	r := netlinkx.Route{Dst: mustPrefix("10.8.0.0/24"), Gw: mustAddr("192.0.2.2"), LinkIndex: idx}
	n := netlinkx.Neigh{LinkIndex: idx, IP: mustAddr("192.0.2.9"), MAC: netlinkx.MAC{2, 0, 0, 0, 0, 9}, State: netlinkx.NUDPermanent}
	for _, err := range []error{a.H.RouteReplace(r), a.H.RouteDel(r), a.H.NeighSet(n), a.H.NeighDel(n),
		a.H.AddrDel(under, mustPrefix("192.0.2.1/24")), a.H.LinkDel(under)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]bool{
		"route 10.8.0.0/24 on #" + itoa(idx) + " deleted":      false,
		"neighbour or FDB entry on #" + itoa(idx) + " deleted": false,
		"address 192.0.2.1/24 on #" + itoa(idx) + " deleted":   false,
		"link ul0 (#" + itoa(idx) + ") deleted":                false,
	}
	for left := len(want); left > 0; {
		select {
		case c, ok := <-changes:
			if !ok {
				t.Fatal("subscription ended early")
			}
			if c.Kind == netlinkx.ChangeRoute && c.Prefix == mustPrefix("10.9.0.0/24") {
				t.Errorf("a change in another namespace: %s", c)
			}
			if seen, ok := want[c.String()]; ok && !seen {
				want[c.String()] = true
				left--
			}
		case <-ctx.Done():
			t.Fatalf("still waiting for some of %v", want)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
