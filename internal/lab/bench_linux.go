package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/weft-net/weft/internal/config"
)

// Benchmarks lists every benchmark, in the order their sections print.
func Benchmarks() []Benchmark {
	return []Benchmark{
		{
			Name:          "throughput",
			Backends:      []string{config.BackendVXLAN, config.BackendHostGW, config.BackendUDP},
			WithoutBigTCP: []string{config.BackendVXLAN, config.BackendHostGW},
			Run:           benchThroughput,
		},
		{
			// IPv6 beside IPv4 in one dual-stack lab, both families with
			// the kernel's 64 KiB GSO limit on the underlay (its BIG TCP
			// setting is IPv4's), each as a ratio to its own bare
			// underlay.
			Name:        "throughput-ipv6",
			Backends:    []string{config.BackendVXLAN, config.BackendHostGW},
			IPFamily:    IPFamilyDual,
			UnderlayGSO: KernelGSO,
			Run:         benchThroughputIPv6,
		},
		{Name: "cni", Run: benchCNI},
		agentBenchmark(), kubeBenchmark(), udpBenchmark(), wireguardBenchmark(),
	}
}

// Bench runs, in this lab, the benchmarks that want its backend.
func (l *Lab) Bench(ctx context.Context, o BenchOptions, benches []Benchmark) ([]Result, error) {
	var results []Result
	var errs []error
	for _, b := range benches {
		if !b.wantsLab(&l.State) {
			continue
		}
		o.progress("bench %s in lab %s (%s)", b.Name, l.Name, l.Backend)
		rs, err := b.Run(ctx, l, o)
		results = append(results, rs...)
		if err != nil {
			results = append(results, Result{Section: b.Name, Metric: l.Backend, Err: err.Error()})
			errs = append(errs, fmt.Errorf("%s (%s): %w", b.Name, l.Backend, err))
		}
	}
	return results, errors.Join(errs...)
}

// RunSuite runs benches: those needing no lab once, then, for each backend
// some benchmark wants, brings up a lab, runs every benchmark that wants it
// and takes the lab down.
func RunSuite(ctx context.Context, o BenchOptions, benches []Benchmark) ([]Result, error) {
	var results []Result
	var errs []error
	for _, b := range benches {
		if len(b.Backends) != 0 {
			continue
		}
		o.progress("bench %s", b.Name)
		rs, err := b.Run(ctx, nil, o)
		results = append(results, rs...)
		if err != nil {
			results = append(results, Result{Section: b.Name, Err: err.Error()})
			errs = append(errs, fmt.Errorf("%s: %w", b.Name, err))
		}
	}
	def, err := o.Lab.withDefaults()
	if err != nil {
		return results, err
	}
	for _, sl := range suiteLabs(benches, def.UnderlayGSO) {
		lo := o.Lab
		lo.Backend, lo.UnderlayGSO = sl.Backend, sl.UnderlayGSO
		if sl.IPFamily != "" {
			lo.IPFamily = sl.IPFamily
		}
		lo.Name, lo.Dir = "", ""
		o.progress("lab up: %s, underlay GSO %d, IP family %s", sl.Backend, sl.UnderlayGSO, lo.IPFamily)
		l, err := Up(ctx, lo)
		if err != nil {
			results = append(results, Result{Section: "lab", Metric: sl.Backend, Err: err.Error()})
			errs = append(errs, err)
			continue
		}
		rs, err := l.Bench(ctx, o, sl.Benches)
		results = append(results, rs...)
		if err != nil {
			errs = append(errs, err)
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		if err := l.Down(dctx, DownOptions{}); err != nil {
			errs = append(errs, fmt.Errorf("lab %s down: %w", l.Name, err))
		}
		cancel()
	}
	return results, errors.Join(errs...)
}

// benchThroughput measures one TCP stream from node 1 to node 2: over the
// bare underlay (eth0 to eth0) and pod to pod through the fabric. Both use
// the same iperf3 settings, alternate (bare, pod, pod, bare, ...) and keep
// the best of each, so that a burst of load elsewhere on the machine does
// not decide the ratio.
func benchThroughput(ctx context.Context, l *Lab, o BenchOptions) ([]Result, error) {
	if len(l.Nodes) < 2 || len(l.Nodes[0].Pods) == 0 || len(l.Nodes[1].Pods) == 0 {
		return nil, fmt.Errorf("needs 2 nodes with a pod each")
	}
	n1, n2 := l.Nodes[0], l.Nodes[1]
	p1, p2 := n1.Pods[0], n2.Pods[0]
	d := o.duration()
	var bare, pod []IperfRun
	rounds := o.rounds()
	for _, step := range interleave(rounds) {
		var r IperfRun
		var err error
		if step == "bare" {
			r, err = Iperf(ctx, n1.NS, n2.NS, n2.PublicIP, d, 1)
			bare = append(bare, r)
		} else {
			r, err = Iperf(ctx, p1.NS, p2.NS, p2.IP, d, 1)
			pod = append(pod, r)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", step, err)
		}
		o.progress("  %-4s %6.2f Gbit/s (%d retransmits)", step, r.Bps/1e9, r.Retransmits)
	}
	b, p := best(bare), best(pod)
	settings := fmt.Sprintf("iperf3 1 stream, -t %s, best of %d; underlay %s",
		strconv.Itoa(int(d.Seconds())), rounds, l.UnderlayGSONote())
	ratio, err := throughputRatio(fmt.Sprintf("%s n1→n2, best of %d runs", l.Backend, len(bare)), p.Bps, b.Bps)
	if err != nil {
		return nil, err
	}
	target := map[string]float64{config.BackendVXLAN: 0.7, config.BackendHostGW: 0.95}[l.Backend]
	ratioNote := ""
	if target > 0 {
		verdict := "meets"
		if ratio < target {
			verdict = "BELOW"
		}
		ratioNote = fmt.Sprintf("%s target ≥ %.2f", verdict, target)
	}
	underlay := "64 KiB GSO"
	if l.UnderlayGSO > KernelGSO {
		underlay = "BIG TCP"
	}
	return []Result{
		{Section: "throughput", Metric: fmt.Sprintf("bare underlay n1→n2 (%s lab, %s)", l.Backend, underlay), Value: b.Bps / 1e9, Unit: "Gbit/s", Note: settings},
		{Section: "throughput", Metric: fmt.Sprintf("%s pod→pod n1→n2 (%s)", l.Backend, underlay), Value: p.Bps / 1e9, Unit: "Gbit/s", Note: fmt.Sprintf("%d retransmits", p.Retransmits)},
		{Section: "throughput", Metric: fmt.Sprintf("%s / bare (%s)", l.Backend, underlay), Value: ratio, Unit: "×", Note: ratioNote},
	}, nil
}

// benchThroughputIPv6 measures, in a dual-stack lab, one TCP stream from
// node 1 to node 2 over the bare underlay and pod to pod, over IPv4 and
// over IPv6, interleaved as benchThroughput does, and compares the two
// families' pod / bare ratios.
func benchThroughputIPv6(ctx context.Context, l *Lab, o BenchOptions) ([]Result, error) {
	if !l.HasIPv4() || !l.HasIPv6() {
		return nil, fmt.Errorf("needs a dual-stack lab (--ip-family dual)")
	}
	if len(l.Nodes) < 2 || len(l.Nodes[0].Pods) == 0 || len(l.Nodes[1].Pods) == 0 {
		return nil, fmt.Errorf("needs 2 nodes with a pod each")
	}
	n1, n2 := l.Nodes[0], l.Nodes[1]
	p1, p2 := n1.Pods[0], n2.Pods[0]
	d := o.duration()
	rounds := o.rounds()
	type kind struct {
		name             string
		clientNS, server string
		addr             netip.Addr
	}
	kinds := map[string]kind{
		"bare4": {"bare IPv4", n1.NS, n2.NS, n2.PublicIP},
		"pod4":  {"pod IPv4", p1.NS, p2.NS, p2.IP},
		"bare6": {"bare IPv6", n1.NS, n2.NS, n2.PublicIPv6},
		"pod6":  {"pod IPv6", p1.NS, p2.NS, p2.IP6},
	}
	runs := map[string][]IperfRun{}
	for i, step := range interleave(rounds) {
		// Each family's pair of a round runs back to back, the families
		// alternating first.
		fams := []string{"4", "6"}
		if i%2 == 1 {
			fams = []string{"6", "4"}
		}
		for _, f := range fams {
			k := kinds[step+f]
			r, err := Iperf(ctx, k.clientNS, k.server, k.addr, d, 1)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k.name, err)
			}
			runs[step+f] = append(runs[step+f], r)
			o.progress("  %-9s %6.2f Gbit/s (%d retransmits)", k.name, r.Bps/1e9, r.Retransmits)
		}
	}
	b4, p4, b6, p6 := best(runs["bare4"]), best(runs["pod4"]), best(runs["bare6"]), best(runs["pod6"])
	fr, err := compareFamilyRatios(b4.Bps, p4.Bps, b6.Bps, p6.Bps)
	if err != nil {
		return nil, err
	}
	verdict := "meets"
	if !fr.Meets {
		verdict = "BELOW"
	}
	settings := fmt.Sprintf("iperf3 1 stream, -t %s, best of %d, IPv4 and IPv6 interleaved; dual-stack lab, underlay %s",
		strconv.Itoa(int(d.Seconds())), rounds, l.UnderlayGSONote())
	be := l.Backend
	return []Result{
		{Section: "throughput-ipv6", Metric: fmt.Sprintf("bare underlay n1→n2 IPv6 (%s lab)", be), Value: b6.Bps / 1e9, Unit: "Gbit/s", Note: settings},
		{Section: "throughput-ipv6", Metric: fmt.Sprintf("%s pod→pod n1→n2 IPv6", be), Value: p6.Bps / 1e9, Unit: "Gbit/s", Note: fmt.Sprintf("%d retransmits", p6.Retransmits)},
		{Section: "throughput-ipv6", Metric: fmt.Sprintf("bare underlay n1→n2 IPv4 (%s lab)", be), Value: b4.Bps / 1e9, Unit: "Gbit/s"},
		{Section: "throughput-ipv6", Metric: fmt.Sprintf("%s pod→pod n1→n2 IPv4", be), Value: p4.Bps / 1e9, Unit: "Gbit/s", Note: fmt.Sprintf("%d retransmits", p4.Retransmits)},
		{Section: "throughput-ipv6", Metric: fmt.Sprintf("%s IPv4 / bare IPv4", be), Value: fr.R4, Unit: "×"},
		{Section: "throughput-ipv6", Metric: fmt.Sprintf("%s IPv6 / bare IPv6", be), Value: fr.R6, Unit: "×",
			Note: fmt.Sprintf("%s target ≥ %.2f (IPv4 ratio − %.0f %%)", verdict, fr.Floor, ipv6RatioTolerance*100)},
	}, nil
}

func best(rs []IperfRun) IperfRun {
	var b IperfRun
	for _, r := range rs {
		if r.Bps > b.Bps {
			b = r
		}
	}
	return b
}

const iperfPort = 5201
