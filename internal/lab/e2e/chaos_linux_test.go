package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lab/labtest"
)

// `weft lab chaos` on a 3-node vxlan lab: every kind of fault at least
// once, all healed, and the faults that cut no path (agent kill, etcd
// loss, hostile lease) lose no packet. The 5-minute run is the
// same with a longer Duration.
func TestChaos(t *testing.T) {
	labtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := upLab(t, ctx, lab.Options{Nodes: 3, PodsPerNode: 1, Backend: "vxlan"})
	e.converged(ctx, 10*time.Second)

	var progress strings.Builder
	r, err := e.l.Chaos(ctx, lab.ChaosOptions{Duration: 40 * time.Second, Seed: 11, Progress: &progress})
	var table strings.Builder
	r.Render(&table)
	t.Logf("faults:\n%s\n%s", progress.String(), table.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range r.Classes {
		if c.Faults == 0 {
			t.Errorf("fault %s never made", c.Name)
		}
	}
	if n := r.Unhealed(); n != 0 {
		t.Errorf("%d faults unhealed, or lost packets where no path was cut", n)
	}
	e.mesh(ctx)
}
