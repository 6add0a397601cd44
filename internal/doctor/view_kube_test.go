package doctor

import (
	"testing"

	"github.com/weft-net/weft/internal/netlinkx"
)

// weft status's view in Kubernetes: each lease named by its Node; a
// subnet routed without a lease that is a Node's podCIDR (its annotations
// gone) names that Node, one of no Node names none.
func TestClusterViewKubeStale(t *testing.T) {
	v := ClusterView(healthyKube())
	if len(v.Leases) != 2 || v.Leases[0].Node != "n1" || !v.Leases[0].Own || v.Leases[1].Node != "n2" || v.Leases[1].Missing != "" || len(v.Stale) != 0 || v.StaleNode != nil {
		t.Fatalf("healthy: leases %+v, stale %v %v", v.Leases, v.Stale, v.StaleNode)
	}

	f := healthyKube()
	f.Kube.Nodes[1].Annotations = nil // n2's agent gone, its annotations removed
	f.Node.Routes = append(f.Node.Routes, netlinkx.Route{Dst: pfx("10.244.3.0/24"), Gw: addr("10.244.3.0"), LinkIndex: devIdx, OnLink: true})
	v = ClusterView(f)
	if len(v.Leases) != 1 || v.Leases[0].Node != "n1" {
		t.Errorf("n2 without annotations: leases %+v, want n1's only", v.Leases)
	}
	if len(v.Stale) != 2 || v.StaleNode[pfx("10.244.2.0/24")] != "n2" || len(v.StaleNode) != 1 {
		t.Errorf("n2 without annotations: stale %v, nodes %v; want 10.244.2.0/24 named n2, 10.244.3.0/24 unnamed", v.Stale, v.StaleNode)
	}
}
