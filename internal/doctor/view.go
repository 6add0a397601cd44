package doctor

import (
	"cmp"
	"encoding/json"
	"net/netip"
	"slices"

	"github.com/weft-net/weft/internal/lease/kubestore"
)

// View is the cluster as this node sees it: every lease, whether this
// node has programmed it, and the checks' report. weft status renders it.
type View struct {
	Report Report
	// Own and Own6 are this node's subnets (from its subnet file);
	// invalid when unknown or not of the network's families.
	Own, Own6 netip.Prefix
	// Programmed says whether Leases' Missing are known for IPv4: the
	// datapath checks ran; ProgrammedIPv6 the same for IPv6.
	Programmed     bool
	ProgrammedIPv6 bool
	Leases         []LeaseView
	// Stale are subnets this node routes that no lease holds: a node
	// whose lease expired or was deleted.
	Stale []netip.Prefix
	// StaleNode names, for a stale subnet that is a Node's podCIDR
	// (Kubernetes store), that Node: it exists but publishes no lease.
	StaleNode map[netip.Prefix]string
}

// LeaseView is one lease.
type LeaseView struct {
	Key         string          `json:"key"`
	Node        string          `json:"node,omitempty"` // the Node's name (Kubernetes store)
	Subnet      netip.Prefix    `json:"subnet,omitzero"`
	IPv6Subnet  netip.Prefix    `json:"ipv6Subnet,omitzero"`
	PublicIP    netip.Addr      `json:"publicIP"`
	PublicIPv6  netip.Addr      `json:"publicIPv6,omitzero"`
	BackendType string          `json:"backendType"`
	BackendData json.RawMessage `json:"backendData,omitempty"`
	// BackendV6Data is the IPv6 half's (vxlan's IPv6 VtepMAC).
	BackendV6Data json.RawMessage `json:"backendV6Data,omitempty"`
	Own           bool            `json:"own"` // this node's
	// Reservation: an etcd key without a lease, which never expires.
	Reservation bool `json:"reservation"`
	// TTL is the time left and Renewed the time since the lease was
	// granted or last renewed; both valid when TTLKnown.
	TTLKnown bool    `json:"ttlKnown"`
	TTL      Seconds `json:"ttlSeconds,omitempty"`
	Renewed  Seconds `json:"renewedSecondsAgo,omitempty"`
	Expired  bool    `json:"expired"`
	// Missing is what this node lacks to reach the lease ("route, fdb
	// entry", "IPv6 route"); empty when all is programmed, for its own,
	// or when not known (View.Programmed false).
	Missing string `json:"missing,omitempty"`
	// Probe is the probe's verdict, when doctor probed this peer, and
	// ProbeIPv6 that of its IPv6 half.
	Probe     *ProbeView `json:"probe,omitempty"`
	ProbeIPv6 *ProbeView `json:"probeIPv6,omitempty"`
}

// ClusterView runs the checks over f (with its probes, if any) and
// returns every lease as this node sees it.
func ClusterView(f Facts) View {
	e := evaluate(f)
	e.peers()
	v := View{Report: Report{Results: e.out}, Own: e.own, Own6: e.own6, Programmed: e.programChecked, ProgrammedIPv6: e.programChecked6, Stale: slices.Clone(e.stale)}
	for _, l := range e.leases {
		// The checks' notes and the Node names are kept by leaseKey.
		key := leaseKey(l)
		lv := LeaseView{
			Key: l.Key(), Node: e.nodeOf[key], Subnet: l.Subnet, IPv6Subnet: l.IPv6Subnet,
			PublicIP: l.Attrs.PublicIP, BackendType: l.Attrs.BackendType, BackendData: l.Attrs.BackendData, BackendV6Data: l.Attrs.BackendV6Data,
			Own: e.own.IsValid() && l.Subnet == e.own || !e.own.IsValid() && e.own6.IsValid() && l.IPv6Subnet == e.own6,
		}
		if r, ok := e.meta[l.Subnet]; ok && f.Kube == nil {
			switch {
			case r.LeaseID == 0:
				lv.Reservation = true
			case r.TTLErr == nil:
				lv.TTLKnown, lv.TTL, lv.Expired = true, Seconds(r.TTL), r.TTL <= 0
				if r.Granted > 0 {
					lv.Renewed = Seconds(max(r.Granted-r.TTL, 0))
				}
			}
		}
		if l.Attrs.PublicIPv6 != nil {
			lv.PublicIPv6 = *l.Attrs.PublicIPv6
		}
		if !lv.Own {
			lv.Missing = e.missing[key]
			// Each family's probe is kept under the family's subnet.
			if l.Subnet.IsValid() {
				lv.Probe = e.probed[l.Subnet]
			}
			if l.IPv6Subnet.IsValid() {
				lv.ProbeIPv6 = e.probed[l.IPv6Subnet]
			}
		}
		v.Leases = append(v.Leases, lv)
	}
	if f.Kube != nil && len(v.Stale) > 0 {
		// A stale subnet in Kubernetes is a Node without its lease (its
		// annotations removed, its agent gone) or a Node deleted: name
		// the Node where there is one, so the row says whose it is.
		for i := range f.Kube.Nodes {
			v4, v6, _ := kubestore.PodCIDRs(&f.Kube.Nodes[i])
			for _, p := range []netip.Prefix{v4, v6} {
				if p.IsValid() && slices.Contains(v.Stale, p) {
					if v.StaleNode == nil {
						v.StaleNode = map[netip.Prefix]string{}
					}
					v.StaleNode[p] = f.Kube.Nodes[i].Name
				}
			}
		}
	}
	slices.SortFunc(v.Leases, func(a, b LeaseView) int {
		return cmp.Or(a.Subnet.Addr().Compare(b.Subnet.Addr()), a.IPv6Subnet.Addr().Compare(b.IPv6Subnet.Addr()))
	})
	return v
}
