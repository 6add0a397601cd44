package daemon

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/backend/hostgw"
	"github.com/weft-net/weft/internal/backend/udp"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/netif"
)

// TestBackendMetrics: the metrics a backend exports land on weftd's
// registry; a backend without any adds nothing. Neither backend touches
// the kernel before Configure.
func TestBackendMetrics(t *testing.T) {
	params := func(js string) backend.Params {
		nw, _, err := config.Parse([]byte(js))
		if err != nil {
			t.Fatal(err)
		}
		a := netip.MustParseAddr("192.0.2.10")
		return backend.Params{Network: nw, Ext: netif.External{Name: "eth0", Index: 2, MTU: 1500, Addr: a, PublicIP: a}}
	}
	log := slog.New(slog.DiscardHandler)

	u, err := udp.New(params(`{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`), nil, log)
	if err != nil {
		t.Fatal(err)
	}
	m := newMetrics()
	if err := registerBackendMetrics(m.reg, u); err != nil {
		t.Fatal(err)
	}
	// Two directions, nine drop reasons.
	if n, err := testutil.GatherAndCount(m.reg, "weft_udp_packets_total", "weft_udp_dropped_total"); err != nil || n != 11 {
		t.Errorf("udp metrics on the registry: %d series, %v; want 11", n, err)
	}
	if err := registerBackendMetrics(m.reg, u); err == nil || !strings.Contains(err.Error(), "register metrics") {
		t.Errorf("registering twice: err = %v", err)
	}

	hg, err := hostgw.New(params(`{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`), nil, log)
	if err != nil {
		t.Fatal(err)
	}
	m = newMetrics()
	before, err := testutil.GatherAndCount(m.reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := registerBackendMetrics(m.reg, hg); err != nil {
		t.Fatal(err)
	}
	if after, _ := testutil.GatherAndCount(m.reg); after != before {
		t.Errorf("host-gw added %d series", after-before)
	}
}
