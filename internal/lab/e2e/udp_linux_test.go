package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lab/labtest"
)

// TestUDPBackend: three nodes on the udp backend reach each other pod to
// pod and node to pod, and TCP runs both ways between pods on different
// nodes.
func TestUDPBackend(t *testing.T) {
	labtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := upLab(t, ctx, lab.Options{Nodes: 3, PodsPerNode: 1, Backend: "udp"})
	e.mesh(ctx)

	a, b := e.l.Node(1).Pods[0], e.l.Node(2).Pods[0]
	for _, dir := range []struct{ from, to lab.Pod }{{a, b}, {b, a}} {
		r, err := lab.Iperf(ctx, dir.from.NS, dir.to.NS, dir.to.IP, 2*time.Second, 1)
		if err != nil {
			t.Fatalf("TCP %s -> %s: %v", dir.from.Name, dir.to.Name, err)
		}
		t.Logf("TCP %s -> %s over udp: %.2f Gbit/s, %d retransmits", dir.from.Name, dir.to.Name, r.Bps/1e9, r.Retransmits)
		// Far below what the datapath does; above what a broken one
		// (dropping, or stuck in retransmissions) would.
		if r.Bps < 10e6 {
			t.Errorf("TCP %s -> %s: %.1f Mbit/s", dir.from.Name, dir.to.Name, r.Bps/1e6)
		}
	}
	e.mesh(ctx)
}
