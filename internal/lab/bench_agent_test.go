package lab

import (
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/backend/vxlan"
	"github.com/weft-net/weft/internal/lease"
)

func TestFakeVXLANLeases(t *testing.T) {
	network := netip.MustParsePrefix("10.96.0.0/12")
	ls, err := fakeVXLANLeases(network, 24, 1, 1000)
	if err != nil {
		t.Fatal(err)
	}
	more, err := fakeVXLANLeases(network, 24, 1001, 20)
	if err != nil {
		t.Fatal(err)
	}
	ls = append(ls, more...)
	if ls[0].Subnet != netip.MustParsePrefix("10.96.1.0/24") || ls[1019].Subnet != netip.MustParsePrefix("10.99.252.0/24") {
		t.Errorf("subnets %s .. %s", ls[0].Subnet, ls[1019].Subnet)
	}
	subnets, pubs, macs := map[netip.Prefix]bool{}, map[netip.Addr]bool{}, map[vxlan.BackendData]bool{}
	for _, l := range ls {
		if !network.Contains(l.Subnet.Addr()) || l.Subnet.Masked() != l.Subnet {
			t.Fatalf("subnet %s not a /24 of %s", l.Subnet, network)
		}
		if !fakePublicIPs.Contains(l.Attrs.PublicIP) || l.Attrs.PublicIP == fakePublicIPs.Addr() {
			t.Fatalf("PublicIP %s", l.Attrs.PublicIP)
		}
		// What the agent will do with the value: parse it as stored.
		val, err := lease.MarshalAttrs(l.Attrs)
		if err != nil {
			t.Fatal(err)
		}
		a, err := lease.UnmarshalAttrs(val)
		if err != nil {
			t.Fatal(err)
		}
		d, err := vxlan.ParseBackendData(a.BackendData)
		if err != nil || d.VNI != 1 || a.BackendType != "vxlan" {
			t.Fatalf("lease %s: %s: %v", l.Subnet, val, err)
		}
		subnets[l.Subnet], pubs[l.Attrs.PublicIP], macs[d] = true, true, true
	}
	if len(subnets) != len(ls) || len(pubs) != len(ls) || len(macs) != len(ls) {
		t.Errorf("%d leases: %d subnets, %d PublicIPs, %d MACs", len(ls), len(subnets), len(pubs), len(macs))
	}
	if _, err := fakeVXLANLeases(netip.MustParsePrefix("10.244.0.0/16"), 24, 1, 1000); err == nil {
		t.Error("1000 /24s of a /16: no error")
	}
}

func TestQuantile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	for _, c := range []struct {
		in   []time.Duration
		q    float64
		want time.Duration
	}{
		{nil, 0.5, 0},
		{ms(7), 0.5, 7 * time.Millisecond},
		{ms(9, 1, 5), 0.5, 5 * time.Millisecond},
		{ms(4, 1, 3, 2), 0.5, 2 * time.Millisecond},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0.9, 9 * time.Millisecond},
		{ms(1, 2, 3), 1, 3 * time.Millisecond},
	} {
		if got := quantile(c.in, c.q); got != c.want {
			t.Errorf("quantile(%v, %v) = %v, want %v", c.in, c.q, got, c.want)
		}
	}
}

func TestParseProc(t *testing.T) {
	status := []byte("Name:\tweftd\nVmPeak:\t 1262436 kB\nVmHWM:\t   23456 kB\nVmRSS:\t   20000 kB\n")
	if got, err := parseVmHWM(status); err != nil || got != 23456*1024 {
		t.Errorf("VmHWM = %d, %v", got, err)
	}
	if _, err := parseVmHWM([]byte("Name:\tx\n")); err == nil {
		t.Error("no VmHWM: no error")
	}
	// A command name with spaces and a parenthesis.
	stat := []byte("4242 (we ft) d) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 37 0 0 20 0 9 0 123 456 789\n")
	if got, err := parsePIDStatCPU(stat); err != nil || got != 1870*time.Millisecond {
		t.Errorf("pid CPU = %v, %v", got, err)
	}
	machine := []byte("cpu  100 5 50 9000 70 3 2 1 0 0\ncpu0 50 2 25 4500 35 1 1 0 0 0\nintr 1\n")
	if got, err := parseMachineCPU(machine); err != nil || got != 1610*time.Millisecond {
		t.Errorf("machine CPU = %v, %v", got, err)
	}
}

func TestParseProgrammed(t *testing.T) {
	log := []byte(`time=2026-11-24T00:35:41.800Z level=INFO msg="datapath configured" backend=vxlan
time=2026-11-24T00:35:41.802Z level=INFO msg="programmed 1001 leases in 312ms"
`)
	n, d, ok := parseProgrammed(log)
	if !ok || n != 1001 || d != 312*time.Millisecond {
		t.Errorf("parseProgrammed = %d, %v, %v", n, d, ok)
	}
	if _, _, ok := parseProgrammed([]byte("msg=ready\n")); ok {
		t.Error("found a figure in a log without one")
	}
}

func TestVerdict(t *testing.T) {
	if verdict(0.4, 0.5, true) != "meets" || verdict(0.6, 0.5, true) != "MISSES" ||
		verdict(0.35, 0.3, false) != "meets" || verdict(0.2, 0.3, false) != "MISSES" {
		t.Error("verdicts wrong")
	}
}
