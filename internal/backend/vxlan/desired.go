// Package vxlan is the flannel-compatible VXLAN backend: a device
// flannel.<VNI> and, per remote node, a permanent neighbour entry, an FDB
// entry and a route, so that a weft node and a flannel node interoperate.
// desired.go computes the kernel state from the lease set (pure); the
// _linux.go files converge the kernel to it.
package vxlan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

// BackendData is what a vxlan node publishes in its lease, flannel's
// vxlanLeaseAttrs: {"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}.
type BackendData struct {
	VNI     int
	VtepMAC netlinkx.MAC
}

// ParseBackendData decodes and checks a remote lease's BackendData.
func ParseBackendData(raw json.RawMessage) (BackendData, error) {
	var d BackendData
	if len(raw) == 0 {
		return d, errors.New("no BackendData")
	}
	// A missing VtepMAC would leave the zero MAC; the check below rejects it.
	if err := json.Unmarshal(raw, &d); err != nil {
		return d, fmt.Errorf("BackendData %s: %s", lease.Clip(string(raw)), lease.Clip(err.Error()))
	}
	if !d.VtepMAC.IsUnicast() {
		return d, fmt.Errorf("BackendData %s: VtepMAC %s is not a unicast MAC", lease.Clip(string(raw)), d.VtepMAC)
	}
	return d, nil
}

// Identities names the VtepMACs a lease publishes, which no other lease
// may (admission's rule, package admit: the older lease keeps it): one per
// family, flannel.<VNI>'s and flannel-v6.<VNI>'s, each unique on its own
// device. BackendData that does not parse names none; the planner refuses
// it.
func Identities(l lease.Lease) []string {
	if l.Attrs.BackendType != config.BackendVXLAN {
		return nil
	}
	var out []string
	if d, err := ParseBackendData(l.Attrs.BackendData); err == nil {
		out = append(out, "VtepMAC "+d.VtepMAC.String())
	}
	if l.IPv6Subnet.IsValid() {
		if d, err := ParseBackendData(l.Attrs.BackendV6Data); err == nil {
			out = append(out, "IPv6 VtepMAC "+d.VtepMAC.String())
		}
	}
	return out
}

// Params is what Desired needs besides the leases. One Planner serves one
// address family: IPv4 (flannel.<VNI>, the leases' Subnet, PublicIP and
// BackendData) or, with IPv6, flannel-v6.<VNI> and the leases' IPv6Subnet,
// PublicIPv6 and BackendV6Data. The rules are the same for both.
type Params struct {
	IPv6     bool
	Network  netip.Prefix // cluster network of the family: remote subnets must lie inside it
	Own      netip.Prefix // this node's subnet of the family
	PublicIP netip.Addr   // this node's of the family: a lease naming it is not a remote node
	VNI      int
	Link     int // flannel.<VNI> (flannel-v6.<VNI>) ifindex

	// DirectRouting sends to remotes on the underlay's own L2 segment
	// (PublicIP inside UnderlaySubnet, the underlay's on-link prefix of
	// the family) by a plain route instead of VXLAN.
	DirectRouting  bool
	Underlay       int
	UnderlaySubnet netip.Prefix
}

// State is the kernel state for the remote leases. Every entry is on
// Params.Link, except DirectRouting routes, which are on Params.Underlay.
type State struct {
	Routes []netlinkx.Route
	Neighs []netlinkx.Neigh
	FDB    []netlinkx.FDB
}

// Desired computes the routes, neighbours and FDB entries for every remote
// lease (all but own). Leases it cannot use are returned as errors, one per
// lease, and left out; the rest are unaffected. leases need not be sorted.
func Desired(p Params, leases []lease.Lease) (State, []*backend.LeaseError) {
	var pl Planner
	return pl.Desired(p, leases)
}

// Planner keeps the plan of every remote lease, so that a change to a few
// leases (Update) is planned in time proportional to the change, not to
// the cluster: with 5,000 nodes, replanning the whole set for each event
// cost milliseconds and megabytes. Desired plans a whole set. The zero
// value is ready; calls must come from one goroutine.
type Planner struct {
	p       Params
	remotes map[string]*remote         // every remote lease, by lease key
	byMAC   map[netlinkx.MAC][]*remote // remotes that want an FDB entry, by VtepMAC (mostly one)
}

// remote is one remote lease as planned, seen in the planner's family.
type remote struct {
	key     string
	l       lease.Lease
	subnet  netip.Prefix // l's subnet of the family
	pub     netip.Addr   // l's public address of the family; invalid if none
	d       BackendData
	dataErr error // BackendData's decoding, kept while the bytes stay the same
	err     error // why it cannot be programmed, whatever the other leases say
	direct  bool  // routed by DirectRouting over the underlay: no neighbour, no FDB entry
}

// wantsFDB reports whether r competes for its VtepMAC's FDB entry.
func (r *remote) wantsFDB() bool { return r.err == nil && !r.direct }

// Desired plans leases afresh for p, reusing what earlier calls decoded,
// and returns the whole state.
func (pl *Planner) Desired(p Params, leases []lease.Lease) (State, []*backend.LeaseError) {
	prev := pl.remotes
	pl.p = p
	pl.remotes = make(map[string]*remote, len(leases))
	pl.byMAC = make(map[netlinkx.MAC][]*remote, len(leases))
	for _, l := range leases {
		key := l.Key()
		o := prev[key]
		if o != nil && o.l.Identical(l) && pl.subnet(l) != p.Own {
			// Unchanged: the plan is reused (a full pass over thousands
			// of leases allocates nothing for them), its verdict redone
			// for p.
			pl.judge(o)
			pl.insert(o)
			continue
		}
		if r := pl.plan(l, key, o); r != nil {
			pl.insert(r)
		}
	}
	return pl.State()
}

// State is the state of every remote lease as last planned, in subnet
// order, and the leases left out.
func (pl *Planner) State() (State, []*backend.LeaseError) {
	rs := make([]*remote, 0, len(pl.remotes))
	for _, r := range pl.remotes {
		rs = append(rs, r)
	}
	slices.SortFunc(rs, func(a, b *remote) int {
		if c := a.subnet.Addr().Compare(b.subnet.Addr()); c != 0 {
			return c
		}
		return strings.Compare(a.key, b.key)
	})
	st := State{
		Routes: make([]netlinkx.Route, 0, len(rs)),
		Neighs: make([]netlinkx.Neigh, 0, len(rs)),
		FDB:    make([]netlinkx.FDB, 0, len(rs)),
	}
	var skipped []*backend.LeaseError
	for _, r := range rs {
		if err := pl.add(&st, r); err != nil {
			skipped = append(skipped, &backend.LeaseError{Subnet: r.subnet, Err: err})
		}
	}
	return st, skipped
}

// Update applies evs, in order, to the planned lease set, and returns the
// entries of every lease whose plan they may change, as they were before
// and are after: taking the kernel from before to after applies them.
// verdicts holds one entry per such lease: Err nil when it is programmed or
// gone, else why it is left out.
func (pl *Planner) Update(evs []lease.Event) (before, after State, verdicts []*backend.LeaseError) {
	if pl.remotes == nil {
		pl.remotes = map[string]*remote{}
		pl.byMAC = map[netlinkx.MAC][]*remote{}
	}
	// The leases touched, and every lease that competes with them for a
	// VtepMAC: the winner of a MAC may change with them.
	touched := map[string]bool{}
	macs := map[netlinkx.MAC]bool{}
	planned := make([]*remote, len(evs))
	for i, ev := range evs {
		key := ev.Lease.Key()
		touched[key] = true
		if old := pl.remotes[key]; old != nil && old.wantsFDB() {
			macs[old.d.VtepMAC] = true
		}
		if ev.Type != lease.Removed {
			planned[i] = pl.plan(ev.Lease, key, pl.remotes[key])
			if r := planned[i]; r != nil && r.wantsFDB() {
				macs[r.d.VtepMAC] = true
			}
		}
	}
	for m := range macs {
		for _, r := range pl.byMAC[m] {
			touched[r.key] = true
		}
	}
	keys := slices.Sorted(maps.Keys(touched))
	for _, k := range keys {
		if r := pl.remotes[k]; r != nil {
			_ = pl.add(&before, r)
		}
	}
	for i, ev := range evs {
		key := ev.Lease.Key()
		if old := pl.remotes[key]; old != nil {
			pl.remove(old)
		}
		if r := planned[i]; r != nil {
			pl.insert(r)
		}
	}
	for _, k := range keys {
		r := pl.remotes[k]
		if r == nil {
			// Gone: its verdict is forgotten. Its subnet is the one the
			// event named.
			for _, ev := range evs {
				if ev.Lease.Key() == k {
					verdicts = append(verdicts, &backend.LeaseError{Subnet: pl.subnet(ev.Lease)})
					break
				}
			}
			continue
		}
		verdicts = append(verdicts, &backend.LeaseError{Subnet: r.subnet, Err: pl.add(&after, r)})
	}
	return before, after, verdicts
}

// subnet is l's subnet of the planner's family.
func (pl *Planner) subnet(l lease.Lease) netip.Prefix {
	if pl.p.IPv6 {
		return l.IPv6Subnet
	}
	return l.Subnet
}

// view is l's subnet, public address and backend data of the family.
func (pl *Planner) view(l *lease.Lease) (netip.Prefix, netip.Addr, json.RawMessage) {
	if pl.p.IPv6 {
		var pub netip.Addr
		if l.Attrs.PublicIPv6 != nil {
			pub = *l.Attrs.PublicIPv6
		}
		return l.IPv6Subnet, pub, l.Attrs.BackendV6Data
	}
	return l.Subnet, l.Attrs.PublicIP, l.Attrs.BackendData
}

// plan checks one lease; nil when it is not a remote lease at all.
func (pl *Planner) plan(l lease.Lease, key string, old *remote) *remote {
	sn, pub, data := pl.view(&l)
	if sn == pl.p.Own || !sn.IsValid() {
		return nil // ourselves, or a lease without a subnet of this family
	}
	r := &remote{key: key, l: l, subnet: sn, pub: pub}
	if old != nil {
		if _, _, oldData := pl.view(&old.l); bytes.Equal(oldData, data) {
			r.d, r.dataErr = old.d, old.dataErr
		} else {
			r.d, r.dataErr = pl.parseData(data)
		}
	} else {
		r.d, r.dataErr = pl.parseData(data)
	}
	pl.judge(r)
	return r
}

// judge sets r's verdict for the planner's Params.
func (pl *Planner) judge(r *remote) {
	r.err = pl.check(r)
	r.direct = r.err == nil && pl.p.DirectRouting && pl.p.UnderlaySubnet.Contains(r.pub)
}

func (pl *Planner) parseData(raw json.RawMessage) (BackendData, error) {
	d, err := ParseBackendData(raw)
	if err != nil && pl.p.IPv6 {
		// Name the field: a dual-stack lease of an old node may lack it.
		return d, fmt.Errorf("BackendV6Data: %w", err)
	}
	return d, err
}

func (pl *Planner) insert(r *remote) {
	pl.remotes[r.key] = r
	if r.wantsFDB() {
		pl.byMAC[r.d.VtepMAC] = append(pl.byMAC[r.d.VtepMAC], r)
	}
}

func (pl *Planner) remove(r *remote) {
	delete(pl.remotes, r.key)
	if rest := slices.DeleteFunc(pl.byMAC[r.d.VtepMAC], func(o *remote) bool { return o.key == r.key }); len(rest) > 0 {
		pl.byMAC[r.d.VtepMAC] = rest
	} else {
		delete(pl.byMAC, r.d.VtepMAC)
	}
}

// macOwner is the lease whose FDB entry a VtepMAC gets: one entry per MAC,
// or the second node would steal the first's traffic. The lowest subnet
// wins, whatever order the leases came in.
func (pl *Planner) macOwner(mac netlinkx.MAC) *remote {
	var best *remote
	for _, r := range pl.byMAC[mac] {
		if best == nil {
			best = r
			continue
		}
		c := r.subnet.Addr().Compare(best.subnet.Addr())
		if c < 0 || c == 0 && r.key < best.key {
			best = r
		}
	}
	return best
}

// add appends r's entries to st, or says why it has none.
func (pl *Planner) add(st *State, r *remote) error {
	p := &pl.p
	switch {
	case r.err != nil:
		return r.err
	case r.direct:
		st.Routes = append(st.Routes, netlinkx.Route{Dst: r.subnet, Gw: r.pub, LinkIndex: p.Underlay})
		return nil
	}
	if owner := pl.macOwner(r.d.VtepMAC); owner != r {
		return fmt.Errorf("VtepMAC %s is also published by lease %s", r.d.VtepMAC, owner.subnet)
	}
	vtep := lease.SubnetIP(r.subnet)
	// The remote VTEP answers to its subnet's network address, which is
	// the /32 (/128) on its flannel.<VNI> (flannel-v6.<VNI>): route to it
	// on-link, resolve it to its MAC statically, and send that MAC to the
	// node's public address of the family.
	st.Neighs = append(st.Neighs, netlinkx.Neigh{LinkIndex: p.Link, IP: vtep, MAC: r.d.VtepMAC, State: netlinkx.NUDPermanent})
	st.FDB = append(st.FDB, netlinkx.FDB{LinkIndex: p.Link, MAC: r.d.VtepMAC, Dst: r.pub})
	st.Routes = append(st.Routes, netlinkx.Route{Dst: r.subnet, Gw: vtep, LinkIndex: p.Link, OnLink: true})
	return nil
}

// check says why a remote lease cannot be programmed, if it cannot.
func (pl *Planner) check(r *remote) error {
	p := &pl.p
	l := &r.l
	field, fam := "PublicIP", "IPv4"
	if p.IPv6 {
		field, fam = "PublicIPv6", "IPv6"
	}
	switch {
	case !backend.Manages(p.Network, p.Own, r.subnet):
		return fmt.Errorf("subnet is not inside the cluster network %s", p.Network)
	case l.Attrs.BackendType != config.BackendVXLAN:
		return fmt.Errorf("backend type %q, not %q: this node cannot reach it", l.Attrs.BackendType, config.BackendVXLAN)
	case !r.pub.IsValid() || r.pub.Is4() == p.IPv6 || r.pub.IsUnspecified() || r.pub.Is4In6():
		return fmt.Errorf("%s %v is not a usable %s address", field, r.pub, fam)
	case r.pub == p.PublicIP:
		return fmt.Errorf("%s %s is this node's own (a stale lease of this node?)", field, p.PublicIP)
	case r.dataErr != nil:
		return r.dataErr
	case r.d.VNI != p.VNI:
		return fmt.Errorf("VNI %d differs from this node's %d", r.d.VNI, p.VNI)
	}
	return nil
}
