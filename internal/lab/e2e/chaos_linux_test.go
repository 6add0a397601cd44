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

// Chaos in a dual-stack vxlan lab, two rounds of the faults that delete
// the datapath's objects: each kind deletes one of each family (an IPv4
// and an IPv6 route, flannel.1 and flannel-v6.1, their neighbours and
// FDB entries), every pod pings every other over both families, each
// fault heals over both, and none loses an echo of the family it left
// alone.
func TestChaosDualStack(t *testing.T) {
	labtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := upLab(t, ctx, lab.Options{Nodes: 3, PodsPerNode: 1, Backend: "vxlan", IPFamily: lab.IPFamilyDual})
	e.converged(ctx, 10*time.Second)

	kinds := []string{"route-del", "device-del", "neigh-del", "fdb-del"}
	var progress strings.Builder
	r, err := e.l.Chaos(ctx, lab.ChaosOptions{Rounds: 2, Faults: kinds, Seed: 6, Progress: &progress})
	var table strings.Builder
	r.Render(&table)
	t.Logf("faults:\n%s\n%s", progress.String(), table.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Classes) != len(kinds) {
		t.Fatalf("%d kinds of fault, want %d", len(r.Classes), len(kinds))
	}
	// What each kind deleted, by its device or address: one of each family.
	v4, v6 := map[string]string{"route-del": "route 10.244.", "device-del": ": flannel.1",
		"neigh-del": "on flannel.1", "fdb-del": "on flannel.1"},
		map[string]string{"route-del": "route fd00:", "device-del": ": flannel-v6.1",
			"neigh-del": "on flannel-v6.1", "fdb-del": "on flannel-v6.1"}
	lines := strings.Split(progress.String(), "\n")
	for _, c := range r.Classes {
		if c.Faults != 2 || c.Unhealed != 0 {
			t.Errorf("%s: %d faults, %d unhealed; want 2, 0", c.Name, c.Faults, c.Unhealed)
		}
		if len(c.Families) != 2 || c.Families[0].Sent == 0 || c.Families[1].Sent == 0 {
			t.Errorf("%s: echoes per family %+v, want both families pinged", c.Name, c.Families)
		}
		for _, want := range []string{v4[c.Name], v6[c.Name]} {
			if !containsFunc(lines, func(l string) bool { return strings.Contains(l, " "+c.Name+" (") && strings.Contains(l, want) }) {
				t.Errorf("%s never deleted %q", c.Name, want)
			}
		}
	}
	if n := r.Unhealed(); n != 0 {
		t.Errorf("%d faults unhealed, or lost packets of a family they did not cut", n)
	}
	e.mesh(ctx)
}
