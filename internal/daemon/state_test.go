package daemon

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/admit"
)

func mkLease(subnet, public string) lease.Lease {
	return lease.Lease{
		Subnet: netip.MustParsePrefix(subnet),
		Attrs:  lease.Attrs{PublicIP: netip.MustParseAddr(public), BackendType: "vxlan"},
	}
}

func keys(ls []lease.Lease) string {
	var s []string
	for _, l := range ls {
		s = append(s, l.Key()+"@"+l.Attrs.PublicIP.String())
	}
	return strings.Join(s, " ")
}

// admitted is what the datapath gets of s, as the daemon hands it over.
func admitted(t *testing.T, s leaseSet, own lease.Lease) string {
	t.Helper()
	n, _, err := config.Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	var a admit.Set
	ls, _ := a.Reset(n, own, s)
	return keys(ls)
}

func TestLeaseSetApply(t *testing.T) {
	own := mkLease("10.244.1.0/24", "192.0.2.1")
	s := leaseSet{}
	if lost := s.apply([]lease.Event{
		{Type: lease.Added, Lease: mkLease("10.244.2.0/24", "192.0.2.2")},
		{Type: lease.Added, Lease: mkLease("10.244.3.0/24", "192.0.2.3")},
		{Type: lease.Added, Lease: own},
	}, own); lost {
		t.Error("own reported lost on add")
	}
	if lost := s.apply([]lease.Event{{Type: lease.Removed, Lease: mkLease("10.244.2.0/24", "192.0.2.2")}}, own); lost {
		t.Error("own reported lost on another's removal")
	}
	if got := admitted(t, s, own); got != "10.244.1.0-24@192.0.2.1 10.244.3.0-24@192.0.2.3" {
		t.Errorf("admitted: %s", got)
	}
	// Own not yet reported by the watch: the datapath gets it anyway.
	if got := admitted(t, leaseSet{}, own); got != "10.244.1.0-24@192.0.2.1" {
		t.Errorf("admitted without own: %s", got)
	}
	if lost := s.apply([]lease.Event{{Type: lease.Removed, Lease: own}}, own); !lost {
		t.Error("own removal not reported")
	}
	if lost := s.apply([]lease.Event{{Type: lease.Added, Lease: mkLease("10.244.1.0/24", "192.0.2.77")}}, own); !lost {
		t.Error("own subnet taken by another node not reported")
	}
	// Until we hold another lease, our pods keep the subnet: the node
	// that wrote over our key is not routed to (issue 11: such a write
	// rerouted our own pods).
	if got := admitted(t, s, own); got != "10.244.1.0-24@192.0.2.1 10.244.3.0-24@192.0.2.3" {
		t.Errorf("admitted while another node holds our old subnet: %s", got)
	}
	// A late removal of the previous holder of a subnet we now hold is not
	// our loss.
	if lost := s.apply([]lease.Event{{Type: lease.Removed, Lease: mkLease("10.244.1.0/24", "192.0.2.77")}}, own); lost {
		t.Error("removal of the subnet's previous holder reported as our loss")
	}
	// Our key expired in an outage and we took it again before the watch
	// caught up: one batch with both, and nothing lost.
	s[own.Key()] = own
	if lost := s.apply([]lease.Event{{Type: lease.Removed, Lease: own}, {Type: lease.Added, Lease: own}}, own); lost {
		t.Error("own reported lost though the batch ends with it held again")
	}
	if lost := s.apply([]lease.Event{{Type: lease.Added, Lease: own}}, lease.Lease{}); lost {
		t.Error("lost reported before any lease is held")
	}
	if l, ok := s.holder(own.Attrs); !ok || l.Key() != own.Key() {
		t.Errorf("holder: %v %v", l, ok)
	}
}

func TestDrainCoalesces(t *testing.T) {
	ch := make(chan batch, 10)
	for i := range 5 {
		ch <- batch{events: []lease.Event{{Lease: mkLease("10.244."+string(rune('1'+i))+".0/24", "192.0.2.1")}}}
	}
	first := <-ch
	got := drain(ch, first)
	if len(got) != 5 {
		t.Fatalf("drained %d batches, want 5", len(got))
	}
	if len(ch) != 0 {
		t.Errorf("%d left queued", len(ch))
	}
	// One reconcile for the burst: the daemon applies all, then reconciles.
	d := &daemon{leases: leaseSet{}, metrics: newMetrics(), log: discardLogger()}
	full, lost, evs := d.applyBatches(got)
	if full || lost || len(d.leases) != 5 || len(evs) != 5 {
		t.Errorf("full=%v lost=%v leases=%d events=%d", full, lost, len(d.leases), len(evs))
	}
	// A snapshot in the burst replaces the set and asks for a full reconcile.
	full, _, _ = d.applyBatches([]batch{{snapshot: true, events: []lease.Event{{Lease: mkLease("10.244.9.0/24", "192.0.2.9")}}}})
	if !full || len(d.leases) != 1 {
		t.Errorf("snapshot: full=%v leases=%d", full, len(d.leases))
	}
}

func TestRenewAt(t *testing.T) {
	got := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		exp    time.Time
		margin time.Duration
		want   time.Time
	}{
		{"margin before expiry", got.Add(24 * time.Hour), time.Hour, got.Add(23 * time.Hour)},
		{"margin longer than ttl: half-life", got.Add(30 * time.Minute), time.Hour, got.Add(15 * time.Minute)},
		{"margin equal to ttl: half-life", got.Add(time.Hour), time.Hour, got.Add(30 * time.Minute)},
		{"reservation: never", time.Time{}, time.Hour, time.Time{}},
	}
	for _, tt := range tests {
		if at := renewAt(got, tt.exp, tt.margin); !at.Equal(tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, at, tt.want)
		}
	}
}

func TestHealthHandlers(t *testing.T) {
	now := time.Unix(1000, 0)
	h := newHealth(time.Minute)
	h.now = func() time.Time { return now }
	h.alive()
	get := func(fn http.HandlerFunc) (int, string) {
		rec := httptest.NewRecorder()
		fn(rec, httptest.NewRequest("GET", "/", nil))
		return rec.Code, rec.Body.String()
	}
	if code, _ := get(h.serveHealthz); code != 200 {
		t.Errorf("healthz fresh: %d", code)
	}
	h.notReady("waiting for a valid network config: network config: Network: missing")
	if code, body := get(h.serveReadyz); code != 503 || !strings.Contains(body, "Network: missing") {
		t.Errorf("readyz: %d %q", code, body)
	}
	h.setReady()
	if code, _ := get(h.serveReadyz); code != 200 {
		t.Errorf("readyz ready: %d", code)
	}
	now = now.Add(2 * time.Minute)
	if code, body := get(h.serveHealthz); code != 503 || !strings.Contains(body, "no progress for 2m0s") {
		t.Errorf("healthz stale: %d %q", code, body)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
