// Package vxlan is the flannel-compatible VXLAN backend: a device
// flannel.<VNI> and, per remote node, a permanent neighbour entry, an FDB
// entry and a route, so that a weft node and a flannel node interoperate.
// desired.go computes the kernel state from the lease set (pure); the
// _linux.go files converge the kernel to it.
package vxlan

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"

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
		return d, fmt.Errorf("BackendData %s: %w", raw, err)
	}
	if !d.VtepMAC.IsUnicast() {
		return d, fmt.Errorf("BackendData %s: VtepMAC %s is not a unicast MAC", raw, d.VtepMAC)
	}
	return d, nil
}

// Params is what Desired needs besides the leases.
type Params struct {
	Network  netip.Prefix // cluster network: remote subnets must lie inside it
	Own      netip.Prefix // this node's subnet
	PublicIP netip.Addr   // this node's: a lease naming it is not a remote node
	VNI      int
	Link     int // flannel.<VNI> ifindex

	// DirectRouting sends to remotes on the underlay's own L2 segment
	// (PublicIP inside UnderlaySubnet) by a plain route instead of VXLAN.
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

// Planner is Desired with a memory: it keeps each BackendData it parsed, so
// that recomputing the state for a thousand unchanged leases on every event
// does not decode a thousand JSON objects. The zero value is ready.
type Planner struct {
	parsed map[string]parsed // by BackendData bytes
}

type parsed struct {
	d   BackendData
	err error
}

// Desired is the package-level Desired, reusing what earlier calls parsed.
func (pl *Planner) Desired(p Params, leases []lease.Lease) (State, []*backend.LeaseError) {
	order := make([]int, len(leases))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return leases[a].Subnet.Addr().Compare(leases[b].Subnet.Addr()) })

	st := State{
		Routes: make([]netlinkx.Route, 0, len(leases)),
		Neighs: make([]netlinkx.Neigh, 0, len(leases)),
		FDB:    make([]netlinkx.FDB, 0, len(leases)),
	}
	var skipped []*backend.LeaseError
	macOwner := make(map[netlinkx.MAC]netip.Prefix, len(leases))
	prev := pl.parsed
	pl.parsed = make(map[string]parsed, len(leases))
	for _, i := range order {
		l := &leases[i]
		if l.Subnet == p.Own || !l.Subnet.IsValid() {
			continue // ourselves, or an IPv6-only lease this IPv4 backend has no use for
		}
		d, err := pl.checkRemote(p, l, prev)
		if err == nil {
			if other, dup := macOwner[d.VtepMAC]; dup {
				// One FDB entry per MAC: the second node would steal the first's traffic.
				err = fmt.Errorf("VtepMAC %s is also published by lease %s", d.VtepMAC, other)
			}
		}
		if err != nil {
			skipped = append(skipped, &backend.LeaseError{Subnet: l.Subnet, Err: err})
			continue
		}
		if p.DirectRouting && p.UnderlaySubnet.Contains(l.Attrs.PublicIP) {
			st.Routes = append(st.Routes, netlinkx.Route{Dst: l.Subnet, Gw: l.Attrs.PublicIP, LinkIndex: p.Underlay})
			continue
		}
		macOwner[d.VtepMAC] = l.Subnet
		vtep := lease.SubnetIP(l.Subnet)
		// The remote VTEP answers to its subnet's network address, which is
		// the /32 on its flannel.<VNI>: route to it on-link, resolve it to
		// its MAC statically, and send that MAC to the node's PublicIP.
		st.Neighs = append(st.Neighs, netlinkx.Neigh{LinkIndex: p.Link, IP: vtep, MAC: d.VtepMAC, State: netlinkx.NUDPermanent})
		st.FDB = append(st.FDB, netlinkx.FDB{LinkIndex: p.Link, MAC: d.VtepMAC, Dst: l.Attrs.PublicIP})
		st.Routes = append(st.Routes, netlinkx.Route{Dst: l.Subnet, Gw: vtep, LinkIndex: p.Link, OnLink: true})
	}
	return st, skipped
}

// parse is ParseBackendData through the memory (prev: the previous call's).
func (pl *Planner) parse(raw json.RawMessage, prev map[string]parsed) (BackendData, error) {
	r, ok := pl.parsed[string(raw)]
	if !ok {
		if r, ok = prev[string(raw)]; !ok {
			r.d, r.err = ParseBackendData(raw)
		}
		pl.parsed[string(raw)] = r
	}
	return r.d, r.err
}

// checkRemote says why a remote lease cannot be programmed, if it cannot.
func (pl *Planner) checkRemote(p Params, l *lease.Lease, prev map[string]parsed) (BackendData, error) {
	switch {
	case !backend.Manages(p.Network, p.Own, l.Subnet):
		return BackendData{}, fmt.Errorf("subnet is not inside the cluster network %s", p.Network)
	case l.Attrs.BackendType != config.BackendVXLAN:
		return BackendData{}, fmt.Errorf("backend type %q, not %q: this node cannot reach it", l.Attrs.BackendType, config.BackendVXLAN)
	case !l.Attrs.PublicIP.Is4() || l.Attrs.PublicIP.IsUnspecified():
		return BackendData{}, fmt.Errorf("PublicIP %v is not a usable IPv4 address", l.Attrs.PublicIP)
	case l.Attrs.PublicIP == p.PublicIP:
		return BackendData{}, fmt.Errorf("PublicIP %s is this node's own (a stale lease of this node?)", p.PublicIP)
	}
	d, err := pl.parse(l.Attrs.BackendData, prev)
	if err != nil {
		return d, err
	}
	if d.VNI != p.VNI {
		return d, fmt.Errorf("VNI %d differs from this node's %d", d.VNI, p.VNI)
	}
	return d, nil
}
