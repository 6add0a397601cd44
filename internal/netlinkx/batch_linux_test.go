package netlinkx_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/netlinkx/nstest"
)

// vxlanNS is a fresh namespace with a VXLAN device vx7 (no underlay:
// nothing is sent), up, holding 10.244.1.0/32. It returns the device's
// ifindex.
func vxlanNS(t testing.TB) (*nstest.NS, int) {
	t.Helper()
	s := nstest.New(t)
	la := netlinkx.NewLinkAttrs()
	la.Name = "vx7"
	if err := s.H.LinkAdd(&netlinkx.Vxlan{LinkAttrs: la, VxlanId: 7, Port: 8472}); err != nil {
		t.Fatal(err)
	}
	l := s.Link(t, "vx7")
	if err := s.H.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	if err := s.H.AddrReplace(l, mustPrefix("10.244.1.0/32")); err != nil {
		t.Fatal(err)
	}
	return s, l.Attrs().Index
}

// change is one write, made either through the Handle or queued on a Batch.
type change struct {
	op string // "route", "-route", "neigh", "-neigh", "fdb", "-fdb"
	r  netlinkx.Route
	n  netlinkx.Neigh
	f  netlinkx.FDB
}

func (c change) do(h *netlinkx.Handle) error {
	switch c.op {
	case "route":
		return h.RouteReplace(c.r)
	case "-route":
		return h.RouteDel(c.r)
	case "neigh":
		return h.NeighSet(c.n)
	case "-neigh":
		return h.NeighDel(c.n)
	case "fdb":
		return h.FDBSet(c.f)
	case "-fdb":
		return h.FDBDel(c.f)
	}
	panic(c.op)
}

func (c change) queue(b *netlinkx.Batch) {
	switch c.op {
	case "route":
		b.RouteReplace(c.r)
	case "-route":
		b.RouteDel(c.r)
	case "neigh":
		b.NeighSet(c.n)
	case "-neigh":
		b.NeighDel(c.n)
	case "fdb":
		b.FDBSet(c.f)
	case "-fdb":
		b.FDBDel(c.f)
	default:
		panic(c.op)
	}
}

// remote is what the vxlan backend writes for remote node i on link:
// neighbour, FDB entry, route.
func remote(link, i int) []change {
	vtep := netip.AddrFrom4([4]byte{10, byte(245 + i>>8), byte(i), 0})
	mac := netlinkx.MAC{2, 0x42, 0, 0, byte(i >> 8), byte(i)}
	return []change{
		{op: "neigh", n: netlinkx.Neigh{LinkIndex: link, IP: vtep, MAC: mac, State: netlinkx.NUDPermanent}},
		{op: "fdb", f: netlinkx.FDB{LinkIndex: link, MAC: mac, Dst: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})}},
		{op: "route", r: netlinkx.Route{Dst: netip.PrefixFrom(vtep, 24), Gw: vtep, LinkIndex: link, OnLink: true}},
	}
}

// mixed is a sequence of every kind of write, some failing: replaces
// that change entries, deletes of present and absent entries, routes in
// other tables, with a metric, without a gateway, IPv6.
func mixed(link int) []change {
	var cs []change
	for i := range 40 {
		cs = append(cs, remote(link, i)...)
	}
	r0, n0, f0 := cs[2].r, cs[0].n, cs[1].f
	moved := r0
	moved.Gw = mustAddr("10.245.0.1")
	f1 := f0
	f1.Dst = mustAddr("198.18.200.1")
	n1 := n0
	n1.MAC = netlinkx.MAC{2, 0x42, 9, 9, 9, 9}
	v6 := mustAddr("fd00:1::")
	cs = append(cs,
		change{op: "route", r: moved},
		change{op: "fdb", f: f1},
		change{op: "neigh", n: n1},
		// A gateway that is neither on-link nor routed: ENETUNREACH.
		change{op: "route", r: netlinkx.Route{Dst: mustPrefix("10.253.0.0/24"), Gw: mustAddr("10.9.9.9"), LinkIndex: link}},
		change{op: "route", r: netlinkx.Route{Dst: mustPrefix("10.253.1.0/24"), LinkIndex: link, Table: 100}},
		change{op: "route", r: netlinkx.Route{Dst: mustPrefix("10.253.2.0/24"), Gw: mustAddr("10.253.2.0"), LinkIndex: link, OnLink: true, Table: 1000}},
		change{op: "route", r: netlinkx.Route{Dst: mustPrefix("10.253.3.0/24"), Gw: mustAddr("10.253.3.0"), LinkIndex: link, OnLink: true, Priority: 50}},
		// A link that does not exist: ENODEV.
		change{op: "neigh", n: netlinkx.Neigh{LinkIndex: 9999, IP: mustAddr("10.253.4.0"), MAC: n1.MAC}},
		change{op: "neigh", n: netlinkx.Neigh{LinkIndex: link, IP: v6, MAC: n1.MAC}},
		change{op: "route", r: netlinkx.Route{Dst: mustPrefix("fd00:1::/64"), Gw: v6, LinkIndex: link, OnLink: true}},
		change{op: "-route", r: cs[5].r},
		change{op: "-neigh", n: cs[6].n},
		change{op: "-fdb", f: cs[7].f},
		// Gone already: success.
		change{op: "-route", r: cs[5].r},
		change{op: "-neigh", n: cs[6].n},
		change{op: "-fdb", f: cs[7].f},
		change{op: "-route", r: netlinkx.Route{Dst: mustPrefix("10.254.0.0/24"), Gw: mustAddr("10.254.0.0"), LinkIndex: link, OnLink: true}},
		// The route whose gateway moved, as it was: no longer there.
		change{op: "-route", r: r0},
	)
	return cs
}

// state is what `ip` and `bridge` show of a namespace's tables, the ones
// the changes touch, by device name (ifindexes differ between namespaces).
func state(t *testing.T, s *nstest.NS) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"ip", "-d", "-4", "route", "show", "table", "all"},
		{"ip", "-d", "-6", "route", "show", "table", "all", "dev", "vx7"},
		{"ip", "-4", "neigh", "show", "dev", "vx7"},
		{"ip", "-6", "neigh", "show", "dev", "vx7", "nud", "permanent"},
		{"bridge", "fdb", "show", "dev", "vx7"},
	} {
		out, err := s.Exec(args[0], args[1:]...)
		if err != nil {
			t.Fatal(err)
		}
		// Sorted: the two namespaces' tables may list in another order.
		lines := strings.Split(strings.TrimSpace(out), "\n")
		for i := range lines {
			lines[i] = strings.TrimSpace(lines[i])
		}
		slices.Sort(lines)
		fmt.Fprintf(&b, "# %s\n%s\n", strings.Join(args, " "), strings.Join(lines, "\n"))
	}
	return b.String()
}

func errno(err error) syscall.Errno {
	var e syscall.Errno
	errors.As(err, &e)
	return e
}

// TestBatchMatchesSingle applies one sequence of writes one at a time in
// one namespace and as a batch in another: every write gets the same
// answer, and the kernel ends up in the same state, with one write per
// chunk and with a chunk boundary every few writes.
func TestBatchMatchesSingle(t *testing.T) {
	for _, per := range []int{0, 7} {
		t.Run(fmt.Sprintf("chunk=%d", per), func(t *testing.T) {
			one, link1 := vxlanNS(t)
			many, link2 := vxlanNS(t)
			if link1 != link2 {
				t.Fatalf("vx7 is #%d in one namespace and #%d in the other", link1, link2)
			}
			if per > 0 {
				if err := netlinkx.SetBatchLimits(many.H, per, 0); err != nil {
					t.Fatal(err)
				}
			}
			cs := mixed(link1)
			b := many.H.NewBatch()
			for _, c := range cs {
				c.queue(b)
			}
			if b.Len() != len(cs) {
				t.Fatalf("Len = %d, want %d", b.Len(), len(cs))
			}
			errs := b.Flush()
			if len(errs) != len(cs) || b.Len() != 0 {
				t.Fatalf("Flush: %d errors for %d changes, %d left queued", len(errs), len(cs), b.Len())
			}
			failed := 0
			for i, c := range cs {
				want := c.do(one.H)
				got := errs[i]
				if (want == nil) != (got == nil) || errno(want) != errno(got) {
					t.Errorf("change %d (%s): batch says %v, one at a time %v", i, c.op, got, want)
				}
				if got != nil {
					failed++
					if want != nil && !strings.HasPrefix(got.Error(), strings.SplitN(want.Error(), ":", 2)[0]) {
						t.Errorf("change %d: batch error %q does not name the change as %q does", i, got, want)
					}
				}
			}
			if failed != 2 {
				t.Errorf("%d changes failed, want the 2 bad ones", failed)
			}
			if a, b := state(t, one), state(t, many); a != b {
				t.Errorf("one at a time:\n%s\nbatched:\n%s", a, b)
			}
		})
	}
}

// TestBatchBadChangeInTheMiddle: the kernel refuses one write of a batch;
// that write alone gets the error, and those after it are made.
func TestBatchBadChangeInTheMiddle(t *testing.T) {
	s, link := vxlanNS(t)
	var cs []change
	for i := range 3 {
		cs = append(cs, remote(link, i)...)
	}
	bad := len(cs)
	// A route whose gateway is this node's own address: EINVAL, as a
	// lease naming our VTEP address got in issue 11.
	cs = append(cs, change{op: "route", r: netlinkx.Route{Dst: mustPrefix("10.244.1.0/24"), Gw: mustAddr("10.244.1.0"), LinkIndex: link, OnLink: true}})
	for i := 3; i < 6; i++ {
		cs = append(cs, remote(link, i)...)
	}
	b := s.H.NewBatch()
	for _, c := range cs {
		c.queue(b)
	}
	errs := b.Flush()
	for i, err := range errs {
		switch {
		case i == bad && err == nil:
			t.Errorf("change %d (the bad route): no error", i)
		case i == bad:
			t.Logf("bad route: %v", err)
			if !strings.HasPrefix(err.Error(), "replace route 10.244.1.0/24 via 10.244.1.0") || errno(err) == 0 {
				t.Errorf("bad route's error %q does not name it or carry the errno", err)
			}
		case err != nil:
			t.Errorf("change %d: %v", i, err)
		}
	}
	rs, err := s.H.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4, LinkIndex: link})
	if err != nil {
		t.Fatal(err)
	}
	ns, _ := s.H.NeighList(link, netlinkx.FamilyV4)
	fs, _ := s.H.FDBList(link)
	for i, c := range cs {
		switch {
		case i == bad:
		case c.op == "route" && !slices.Contains(rs, c.r),
			c.op == "neigh" && !slices.Contains(ns, c.n),
			c.op == "fdb" && !slices.Contains(fs, c.f):
			t.Errorf("change %d (%s) is not in the kernel", i, c.op)
		}
	}
}

// TestBatchLarge programs and removes 2,000 remote nodes (6,000 writes),
// in the chunks the socket's buffer allows.
func TestBatchLarge(t *testing.T) {
	s, link := vxlanNS(t)
	t.Logf("%d changes per write", netlinkx.BatchLimit(s.H))
	var cs []change
	for i := range 2000 {
		cs = append(cs, remote(link, i)...)
	}
	b := s.H.NewBatch()
	for _, c := range cs {
		c.queue(b)
	}
	if err := errors.Join(b.Flush()...); err != nil {
		t.Fatal(err)
	}
	rs, _ := s.H.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4, LinkIndex: link})
	ns, _ := s.H.NeighList(link, netlinkx.FamilyV4)
	fs, _ := s.H.FDBList(link)
	if len(rs) != 2000 || len(ns) != 2000 || len(fs) != 2000 {
		t.Fatalf("%d routes, %d neighbours, %d fdb entries; want 2000 each", len(rs), len(ns), len(fs))
	}
	for _, c := range slices.Backward(cs) {
		c.op = "-" + c.op // its undo
		c.queue(b)
	}
	if err := errors.Join(b.Flush()...); err != nil {
		t.Fatal(err)
	}
	rs, _ = s.H.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4, LinkIndex: link})
	fs, _ = s.H.FDBList(link)
	if len(rs)+len(fs) != 0 {
		t.Fatalf("left: %d routes, %d fdb entries", len(rs), len(fs))
	}
}

// TestBatchLostAnswers: when the answers of one write overflow the
// socket's receive buffer, the kernel drops some. The writes without an
// answer are reported as failed (never as made), and later writes carry
// fewer changes.
func TestBatchLostAnswers(t *testing.T) {
	s, link := vxlanNS(t)
	if err := netlinkx.SetBatchLimits(s.H, 1000, 1); err != nil { // the kernel's minimum buffer
		t.Fatal(err)
	}
	var cs []change
	for i := range 300 {
		cs = append(cs, remote(link, i)...)
	}
	b := s.H.NewBatch()
	for _, c := range cs {
		c.queue(b)
	}
	errs := b.Flush()
	rs, _ := s.H.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4, LinkIndex: link})
	ns, _ := s.H.NeighList(link, netlinkx.FamilyV4)
	fs, _ := s.H.FDBList(link)
	lost := 0
	for i, c := range cs {
		switch err := errs[i]; {
		case errors.Is(err, netlinkx.ErrNoAnswer):
			lost++
		case err != nil:
			t.Errorf("change %d: %v", i, err)
		case c.op == "route" && !slices.Contains(rs, c.r),
			c.op == "neigh" && !slices.Contains(ns, c.n),
			c.op == "fdb" && !slices.Contains(fs, c.f):
			t.Errorf("change %d (%s) reported made but is not in the kernel", i, c.op)
		}
	}
	if lost == 0 {
		t.Fatalf("no answer lost with a %d-byte buffer; the test does not test", 1)
	}
	t.Logf("%d of %d answers lost; now %d changes per write", lost, len(cs), netlinkx.BatchLimit(s.H))
	if n := netlinkx.BatchLimit(s.H); n >= 1000 {
		t.Errorf("still %d changes per write after losing answers", n)
	}
}

// BenchmarkProgram is writing the entries of 5,000 remote nodes (15,000
// writes) into an empty namespace, one at a time and batched. Much of it
// is the kernel's own: each IPv4 route with a gateway of its own is
// compared with every other on the device (fib_find_info), so the routes
// cost more the more there are.
func BenchmarkProgram(b *testing.B) {
	const nodes = 5000
	for _, batched := range []bool{false, true} {
		name := "single"
		if batched {
			name = "batch"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				s, link := vxlanNS(b)
				var cs []change
				for i := range nodes {
					cs = append(cs, remote(link, i)...)
				}
				b.StartTimer()
				if batched {
					bt := s.H.NewBatch()
					for _, c := range cs {
						c.queue(bt)
					}
					if err := errors.Join(bt.Flush()...); err != nil {
						b.Fatal(err)
					}
				} else {
					for _, c := range cs {
						if err := c.do(s.H); err != nil {
							b.Fatal(err)
						}
					}
				}
			}
		})
	}
}

// BenchmarkDump reads back what the vxlan backend holds for 5,000 remote
// nodes, as each full pass does: its allocations are most of the agent's
// heap growth between passes.
func BenchmarkDump(b *testing.B) {
	const nodes = 5000
	s, link := vxlanNS(b)
	bt := s.H.NewBatch()
	for i := range nodes {
		for _, c := range remote(link, i) {
			c.queue(bt)
		}
	}
	if err := errors.Join(bt.Flush()...); err != nil {
		b.Fatal(err)
	}
	for _, kind := range []string{"routes", "neighbours", "fdb"} {
		b.Run(kind, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var n int
				var err error
				switch kind {
				case "routes":
					var rs []netlinkx.Route
					rs, err = s.H.RouteList(netlinkx.RouteFilter{LinkIndex: link, Family: netlinkx.FamilyV4})
					n = len(rs)
				case "neighbours":
					var ns []netlinkx.Neigh
					ns, err = s.H.NeighList(link, netlinkx.FamilyV4)
					n = len(ns)
				case "fdb":
					var fs []netlinkx.FDB
					fs, err = s.H.FDBList(link)
					n = len(fs)
				}
				if err != nil {
					b.Fatal(err)
				}
				if n != nodes {
					b.Fatalf("%d %s, want %d", n, kind, nodes)
				}
			}
		})
	}
}

// The neighbour and FDB lists decode the kernel's dump themselves, on the
// batch socket: they keep to the link and family asked for, and batches
// before and after them get their own answers.
func TestListsKeepToLinkAndFamily(t *testing.T) {
	s, link := vxlanNS(t)
	la := netlinkx.NewLinkAttrs()
	la.Name = "vx8"
	if err := s.H.LinkAdd(&netlinkx.Vxlan{LinkAttrs: la, VxlanId: 8, Port: 8472}); err != nil {
		t.Fatal(err)
	}
	other := s.Link(t, "vx8").Attrs().Index
	mac := func(i byte) netlinkx.MAC { return netlinkx.MAC{2, 0x42, 0, 0, 0, i} }
	n4 := netlinkx.Neigh{LinkIndex: link, IP: netip.MustParseAddr("10.245.0.1"), MAC: mac(1), State: netlinkx.NUDPermanent}
	n6 := netlinkx.Neigh{LinkIndex: link, IP: netip.MustParseAddr("fd00::1"), MAC: mac(2), State: netlinkx.NUDPermanent}
	nOther := netlinkx.Neigh{LinkIndex: other, IP: netip.MustParseAddr("10.245.0.2"), MAC: mac(3), State: netlinkx.NUDPermanent}
	f := netlinkx.FDB{LinkIndex: link, MAC: mac(1), Dst: netip.MustParseAddr("198.18.0.1")}
	fOther := netlinkx.FDB{LinkIndex: other, MAC: mac(3), Dst: netip.MustParseAddr("198.18.0.2")}
	for round := range 2 {
		b := s.H.NewBatch()
		b.NeighSet(n4)
		b.NeighSet(n6)
		b.NeighSet(nOther)
		b.FDBSet(f)
		b.FDBSet(fOther)
		if err := errors.Join(b.Flush()...); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for _, c := range []struct {
			link int
			fam  netlinkx.Family
			want []netlinkx.Neigh
		}{
			{link, netlinkx.FamilyV4, []netlinkx.Neigh{n4}},
			{link, netlinkx.FamilyV6, []netlinkx.Neigh{n6}},
			{other, netlinkx.FamilyV4, []netlinkx.Neigh{nOther}},
		} {
			got, err := s.H.NeighList(c.link, c.fam)
			if err != nil {
				t.Fatal(err)
			}
			// The kernel adds entries of its own once the link is up
			// (ff02::16, NOARP, for its MLD reports): only the
			// permanent ones are this test's.
			got = slices.DeleteFunc(got, func(n netlinkx.Neigh) bool { return n.State != netlinkx.NUDPermanent })
			if !slices.Equal(got, c.want) {
				t.Errorf("round %d: neighbours of #%d family %d: %v, want %v", round, c.link, c.fam, got, c.want)
			}
		}
		for l, want := range map[int][]netlinkx.FDB{link: {f}, other: {fOther}} {
			got, err := s.H.FDBList(l)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("round %d: fdb of #%d: %v, want %v", round, l, got, want)
			}
		}
	}
}
