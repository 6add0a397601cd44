package lab

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/weft-net/weft/internal/config"
)

// Benchmarks lists every benchmark, in the order their sections print.
func Benchmarks() []Benchmark {
	flows := &flowRuns{seen: map[string]map[string]flowFigure{}}
	return []Benchmark{
		{
			Name:          "throughput",
			Backends:      []string{config.BackendVXLAN, config.BackendHostGW, config.BackendUDP},
			WithoutBigTCP: []string{config.BackendVXLAN, config.BackendHostGW},
			Run:           benchThroughput,
		},
		{Name: "cni", Run: benchCNI},
		agentBenchmark(), kubeBenchmark(), udpBenchmark(flows), wireguardBenchmark(flows),
	}
}

// Bench runs, in this lab, the benchmarks that want its backend.
func (l *Lab) Bench(ctx context.Context, o BenchOptions, benches []Benchmark) ([]Result, error) {
	var results []Result
	var errs []error
	for _, b := range benches {
		if !b.wants(l.Backend) {
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
		lo.Name, lo.Dir = "", ""
		o.progress("lab up: %s, underlay GSO %d", sl.Backend, sl.UnderlayGSO)
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
	ratio := p.Bps / b.Bps
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
