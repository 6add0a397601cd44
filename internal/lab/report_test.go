package lab

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestMatrixRender(t *testing.T) {
	m := newMatrix([]string{"n1p1", "n2p1"}, []string{"n1p1", "n2p1"})
	m.Skip[0][0], m.Skip[1][1] = true, true
	m.OK[0][1] = true
	m.Errs[1][0] = "ping 10.244.1.2: exit status 1"
	var b strings.Builder
	m.Render(&b)
	want := "from\\to    n1p1    n2p1\n" +
		"n1p1          ·       ✓\n" +
		"n2p1          ✗       ·\n" +
		"n2p1 -> n1p1: ping 10.244.1.2: exit status 1\n" +
		"1/2 reachable\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	if m.Failures() != 1 || m.Tested() != 2 {
		t.Errorf("failures %d tested %d", m.Failures(), m.Tested())
	}
}

func TestParseIperf(t *testing.T) {
	r, err := parseIperfRun([]byte(`{"start":{},"intervals":[],"end":{"sum_sent":{"bits_per_second":9.5e9,"retransmits":12},"sum_received":{"seconds":5,"bytes":5875000000,"bits_per_second":9.4e9}}}`))
	if err != nil || r.Bps != 9.4e9 || r.Retransmits != 12 {
		t.Errorf("%+v %v", r, err)
	}
	if _, err := parseIperfRun([]byte(`{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}`)); err == nil || !strings.Contains(err.Error(), "Connection refused") {
		t.Errorf("error report: %v", err)
	}
	if _, err := parseIperfRun([]byte(`{"end":{}}`)); err == nil {
		t.Error("empty report accepted")
	}
	if _, err := parseIperfRun([]byte(`iperf3: error`)); err == nil {
		t.Error("non-JSON accepted")
	}
}

func TestSelectAndSuiteOrder(t *testing.T) {
	run := func(context.Context, *Lab, BenchOptions) ([]Result, error) { return nil, nil }
	all := []Benchmark{
		{Name: "a", Backends: []string{"vxlan", "host-gw"}, Run: run},
		{Name: "b", Run: run},
		{Name: "c", Backends: []string{"udp", "vxlan"}, WithoutBigTCP: []string{"vxlan"}, Run: run},
	}
	// A benchmark of dual-stack labs gets labs of its own, after each
	// backend's others, with the GSO limit it asks for.
	dual := append(slices.Clone(all), Benchmark{Name: "d", Backends: []string{"vxlan", "host-gw"}, IPFamily: IPFamilyDual, UnderlayGSO: 65536, Run: run})
	describe := func(labs []suiteLab) string {
		var parts []string
		for _, sl := range labs {
			var names []string
			for _, b := range sl.Benches {
				names = append(names, b.Name)
			}
			fam := ""
			if sl.IPFamily != "" {
				fam = "/" + sl.IPFamily
			}
			parts = append(parts, fmt.Sprintf("%s/%d%s:%s", sl.Backend, sl.UnderlayGSO, fam, strings.Join(names, "+")))
		}
		return strings.Join(parts, " ")
	}
	if got, want := describe(suiteLabs(all, 196608)), "vxlan/196608:a+c vxlan/65536:c host-gw/196608:a udp/196608:c"; got != want {
		t.Errorf("labs with BIG TCP %s, want %s", got, want)
	}
	if got, want := describe(suiteLabs(all, 65536)), "vxlan/65536:a+c host-gw/65536:a udp/65536:c"; got != want {
		t.Errorf("labs without BIG TCP %s, want %s", got, want)
	}
	if got, want := describe(suiteLabs(dual, 196608)), "vxlan/196608:a+c vxlan/65536:c vxlan/65536/dual:d host-gw/196608:a host-gw/65536/dual:d udp/196608:c"; got != want {
		t.Errorf("labs with a dual-stack benchmark %s, want %s", got, want)
	}
	if b := dual[3]; !b.wantsLab(&State{Backend: "vxlan", IPFamily: IPFamilyDual}) || b.wantsLab(&State{Backend: "vxlan"}) || dual[0].wantsLab(&State{Backend: "udp"}) {
		t.Error("wantsLab: the dual-stack benchmark must run in dual-stack labs only")
	}
	sel, err := Select(all, "c, b")
	if err != nil || len(sel) != 2 || sel[0].Name != "c" || sel[1].Name != "b" {
		t.Errorf("select: %v %v", sel, err)
	}
	if _, err := Select(all, "nope"); err == nil || !strings.Contains(err.Error(), "a, b, c") {
		t.Errorf("unknown name: %v", err)
	}
	if sel, _ := Select(all, ""); len(sel) != 3 {
		t.Error("empty selection is not all")
	}
}

func TestRenderResults(t *testing.T) {
	var b strings.Builder
	RenderResults(&b, []Result{
		{Section: "throughput", Metric: "bare", Value: 14.234, Unit: "Gbit/s"},
		{Section: "throughput", Metric: "vxlan / bare", Value: 0.8123, Unit: "×", Note: "meets target ≥ 0.70"},
		{Section: "rss", Metric: "weftd", Err: "no agent"},
	})
	out := b.String()
	for _, want := range []string{"SECTION", "14.2", "0.81", "meets target", "FAILED", "no agent"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestInterleave(t *testing.T) {
	if got := strings.Join(interleave(3), " "); got != "bare pod pod bare bare pod" {
		t.Errorf("interleave(3) = %s", got)
	}
	if (BenchOptions{Quick: true}).rounds() != 2 || (BenchOptions{}).rounds() != 3 {
		t.Error("rounds")
	}
	if (BenchOptions{Quick: true}).duration() != 2*time.Second || (BenchOptions{}).duration() != 5*time.Second ||
		(BenchOptions{Duration: 7 * time.Second}).duration() != 7*time.Second {
		t.Error("duration")
	}
}

func TestPoll(t *testing.T) {
	n := 0
	err := poll(context.Background(), time.Millisecond, func() error {
		n++
		if n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Errorf("poll: %v after %d", err, n)
	}
	stop := errors.New("stop")
	if err := poll(context.Background(), time.Millisecond, func() error { return permanent(stop) }); !errors.Is(err, stop) {
		t.Errorf("permanent: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := poll(ctx, time.Millisecond, func() error { return errors.New("never") }); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "never") {
		t.Errorf("timeout: %v", err)
	}
}

func TestLatencies(t *testing.T) {
	var lat []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		lat = append(lat, time.Duration(i)*time.Millisecond)
	}
	med, p99, maxLat := latencies(lat)
	if med != 51*time.Millisecond || p99 != 99*time.Millisecond || maxLat != 100*time.Millisecond {
		t.Errorf("100 samples: median %v p99 %v max %v, want 51ms 99ms 100ms", med, p99, maxLat)
	}
	med, p99, maxLat = latencies([]time.Duration{3, 1, 2})
	if med != 2 || p99 != 3 || maxLat != 3 {
		t.Errorf("3 samples: median %v p99 %v max %v, want 2 3 3", med, p99, maxLat)
	}
}
