package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lab/labtest"
)

// storeOutage is how long etcd stays away: issue 11's figure.
const storeOutage = 60 * time.Second

// The store away for a minute: pods keep talking without a lost packet;
// running agents say so once and show it on /metrics; a node that starts
// during the outage is reachable from every other within 2 s of the
// store's return.
func TestStoreOutage(t *testing.T) {
	labtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := upLab(t, ctx, lab.Options{Nodes: 3, PodsPerNode: 1, Backend: "vxlan"})
	e.converged(ctx, 10*time.Second)

	// Node 3 leaves: its agent stops and its lease goes, so that it joins
	// anew during the outage.
	if err := e.l.StopAgent(ctx, 3); err != nil {
		t.Fatal(err)
	}
	e.del(ctx, e.leaseKey(3))
	for _, o := range []int{1, 2} {
		if _, err := waitFor(ctx, 5*time.Second, func() error { return e.goneErr(o, e.peer(3)) }); err != nil {
			t.Fatal(err)
		}
	}
	p12 := e.startPing(ctx, e.l.Node(1).Pods[0].NS, e.l.Node(2).Pods[0].IP)
	p21 := e.startPing(ctx, e.l.Node(2).Pods[0].NS, e.l.Node(1).Pods[0].IP)
	marks := []logMark{e.mark(1), e.mark(2)}

	if err := e.l.KillEtcdMember(ctx, 1); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	if err := e.l.StartAgent(ctx, 3); err != nil {
		t.Fatal(err)
	}
	// The outage shows, on every running agent, while it lasts.
	for j, i := range []int{1, 2} {
		e.waitLog(ctx, marks[j], 10*time.Second, `msg="store unreachable; the datapath stays as it is until it returns"`)
		if v := metric(t, ctx, e, i, "weft_store_up"); v != 0 {
			t.Errorf("node %d: weft_store_up %v during the outage", i, v)
		}
	}
	time.Sleep(time.Until(down.Add(storeOutage)))
	for _, i := range []int{1, 2} {
		if code, body, err := e.l.Readyz(ctx, i); err != nil || code != 200 {
			t.Errorf("node %d /readyz after %s without the store: %d %q %v", i, storeOutage, code, body, err)
		}
	}

	if err := e.l.StartEtcdMembers(ctx, 1); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	// The store's return to node 3 routed on both others.
	var joined time.Duration
	for _, o := range []int{1, 2} {
		if _, err := waitFor(ctx, 20*time.Second, func() error { return e.fabricErr(o, []peer{e.peer(3)}) }); err != nil {
			t.Fatalf("node 3, started during the outage: %v", err)
		}
		joined = max(joined, time.Since(back))
	}
	t.Logf("node 3, started during a %s outage: routed on every node %s after the store returned", storeOutage, joined.Round(time.Millisecond))
	if joined > 2*time.Second+slack {
		t.Errorf("node 3 routed %s after the store returned, want within 2 s", joined.Round(time.Millisecond))
	}
	e.converged(ctx, 5*time.Second)
	for j, i := range []int{1, 2} {
		e.waitLog(ctx, marks[j], 10*time.Second, `msg="store reachable again"`)
		if n := strings.Count(marks[j].since(), `msg="store unreachable`); n != 1 {
			t.Errorf("node %d logged the outage %d times, want once", i, n)
		}
	}
	for _, p := range []*pinger{p12, p21} {
		sent, received, unanswered, err := p.stop()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("pod ping through the outage: %d sent, %d received, %d unanswered", sent, received, unanswered)
		if sent-received > 1 || unanswered > 0 { // the last echo may be in flight when ping stops
			t.Errorf("pod ping lost %d of %d echoes through the store's outage", sent-received, sent)
		}
	}
	e.mesh(ctx)
}
