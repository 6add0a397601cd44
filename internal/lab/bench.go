package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is one figure of a benchmark run.
type Result struct {
	Section string  `json:"section"` // the benchmark's name
	Metric  string  `json:"metric"`
	Value   float64 `json:"value"`
	Unit    string  `json:"unit"`
	Note    string  `json:"note,omitempty"`
	Err     string  `json:"error,omitempty"` // the measurement failed
}

// BenchOptions tune a benchmark run.
type BenchOptions struct {
	// Duration of each throughput measurement; default 5s (2s when Quick).
	Duration time.Duration
	Quick    bool
	// Lab is the template for the labs RunSuite brings up (bin dirs, root,
	// nodes, log); Backend and Name are set per lab.
	Lab Options
	// Progress, when set, receives one line per step.
	Progress io.Writer
}

func (o BenchOptions) duration() time.Duration {
	switch {
	case o.Duration > 0:
		return o.Duration
	case o.Quick:
		return 2 * time.Second
	default:
		return 5 * time.Second
	}
}

// rounds is how many times each throughput figure is measured (the best
// counts): 2 when Quick, else 3.
func (o BenchOptions) rounds() int {
	if o.Quick {
		return 2
	}
	return 3
}

// ipv6RatioTolerance is the target: the IPv6 pod→pod / bare ratio
// within 5 % of the IPv4 one.
const ipv6RatioTolerance = 0.05

// familyRatios is the verdict of the IPv6 throughput benchmark: each
// family's pod / bare ratio, the floor the IPv6 one must reach and whether
// it does.
type familyRatios struct {
	R4, R6, Floor float64
	Meets         bool
}

// compareFamilyRatios reads the target as one-sided and relative: IPv6 may
// do better than IPv4, and may do worse by at most ipv6RatioTolerance of the
// IPv4 ratio (not of the throughput, nor in ratio points).
func compareFamilyRatios(bare4, pod4, bare6, pod6 float64) (familyRatios, error) {
	r4, err := throughputRatio("IPv4", pod4, bare4)
	if err != nil {
		return familyRatios{}, err
	}
	r6, err := throughputRatio("IPv6", pod6, bare6)
	if err != nil {
		return familyRatios{}, err
	}
	floor := r4 * (1 - ipv6RatioTolerance)
	return familyRatios{R4: r4, R6: r6, Floor: floor, Meets: r6 >= floor}, nil
}

// throughputRatio is pod / bare, in bit/s. A bare run that moved nothing,
// or a figure that is not a number, is an error: the ratio would be NaN or
// infinite, and NaN fails every comparison, so it would read as meeting
// any target.
func throughputRatio(what string, pod, bare float64) (float64, error) {
	if !(bare > 0) || !(pod >= 0) {
		return 0, fmt.Errorf("%s: pod %v bit/s over bare %v bit/s: no ratio to compare", what, pod, bare)
	}
	return pod / bare, nil
}

// interleave orders rounds measurements of "bare" and "pod" so that each
// kind is as often first as second in a pair: bare pod pod bare bare pod ...
func interleave(rounds int) []string {
	var out []string
	for i := 0; i < rounds; i++ {
		if i%2 == 0 {
			out = append(out, "bare", "pod")
		} else {
			out = append(out, "pod", "bare")
		}
	}
	return out
}

func (o BenchOptions) progress(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", args...)
	}
}

// Benchmark is one section of `weft lab bench`. To add one, write its Run
// function and list it in Benchmarks.
type Benchmark struct {
	Name string
	// Backends are the backends of the labs the benchmark runs in: the
	// suite brings up one lab per backend and runs in it every benchmark
	// that lists that backend. Empty means the benchmark needs no lab and
	// runs once, with l == nil.
	Backends []string
	// WithoutBigTCP are backends whose labs the benchmark runs in a second
	// time with the kernel's 64 KiB GSO limit on the underlay, when the
	// suite's labs have BIG TCP: the pair shows what BIG TCP is worth.
	WithoutBigTCP []string
	// IPFamily, when set, is the family of the labs the benchmark needs
	// (IPFamilyDual); the suite brings those up apart from the others.
	// UnderlayGSO, when set, is their underlay's GSO limit instead of the
	// suite's.
	IPFamily    string
	UnderlayGSO int
	Run         func(ctx context.Context, l *Lab, o BenchOptions) ([]Result, error)
}

// wants reports whether b runs in a lab with backend.
func (b Benchmark) wants(backend string) bool {
	for _, x := range b.Backends {
		if x == backend {
			return true
		}
	}
	return false
}

// wantsLab reports whether b runs in lab s: its backend, and its family
// when b needs one.
func (b Benchmark) wantsLab(s *State) bool {
	if !b.wants(s.Backend) {
		return false
	}
	switch b.IPFamily {
	case "":
		return true
	case IPFamilyDual:
		return s.HasIPv4() && s.HasIPv6()
	}
	return b.IPFamily == s.familyName()
}

// Select returns the benchmarks named in names (comma-separated), or all of
// them when names is empty.
func Select(all []Benchmark, names string) ([]Benchmark, error) {
	if names == "" {
		return all, nil
	}
	var out []Benchmark
	for _, n := range strings.Split(names, ",") {
		found := false
		for _, b := range all {
			if b.Name == strings.TrimSpace(n) {
				out = append(out, b)
				found = true
			}
		}
		if !found {
			var known []string
			for _, b := range all {
				known = append(known, b.Name)
			}
			return nil, fmt.Errorf("no benchmark %q (have %s)", n, strings.Join(known, ", "))
		}
	}
	return out, nil
}

// suiteLab is one lab RunSuite brings up and the benchmarks it runs there.
type suiteLab struct {
	Backend     string
	UnderlayGSO int
	IPFamily    string // "": the default
	Benches     []Benchmark
}

// suiteLabs is the order in which RunSuite visits labs: for every backend
// some benchmark wants, in the order first wanted, one lab with the
// underlay of o (gso) and then, if gso is BIG TCP and some of those
// benchmarks want it, one with the kernel's 64 KiB.
func suiteLabs(benches []Benchmark, gso int) []suiteLab {
	var backends []string
	for _, b := range benches {
		for _, be := range b.Backends {
			if !slices.Contains(backends, be) {
				backends = append(backends, be)
			}
		}
	}
	var out []suiteLab
	for _, be := range backends {
		var all, again []Benchmark
		// Benchmarks of a family of their own get labs of their own, after
		// the backend's others, one per family and GSO limit.
		var special []suiteLab
		for _, b := range benches {
			if !b.wants(be) {
				continue
			}
			if b.IPFamily != "" {
				g := gso
				if b.UnderlayGSO != 0 {
					g = b.UnderlayGSO
				}
				i := slices.IndexFunc(special, func(sl suiteLab) bool { return sl.IPFamily == b.IPFamily && sl.UnderlayGSO == g })
				if i < 0 {
					special = append(special, suiteLab{Backend: be, UnderlayGSO: g, IPFamily: b.IPFamily})
					i = len(special) - 1
				}
				special[i].Benches = append(special[i].Benches, b)
				continue
			}
			all = append(all, b)
			if slices.Contains(b.WithoutBigTCP, be) && gso > KernelGSO {
				again = append(again, b)
			}
		}
		if len(all) > 0 {
			out = append(out, suiteLab{Backend: be, UnderlayGSO: gso, Benches: all})
		}
		if len(again) > 0 {
			out = append(out, suiteLab{Backend: be, UnderlayGSO: KernelGSO, Benches: again})
		}
		out = append(out, special...)
	}
	return out
}

// RenderResults writes results as one aligned table.
func RenderResults(w io.Writer, results []Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SECTION\tMETRIC\tVALUE\tUNIT\tNOTE")
	for _, r := range results {
		value := formatValue(r.Value)
		note := r.Note
		if r.Err != "" {
			value, note = "FAILED", r.Err
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Section, r.Metric, value, r.Unit, note)
	}
	_ = tw.Flush()
}

func formatValue(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// latencies returns the median, the 99th percentile (nearest rank) and
// the maximum of lat, which it sorts; lat must not be empty.
func latencies(lat []time.Duration) (median, p99, maxLat time.Duration) {
	slices.Sort(lat)
	return lat[len(lat)/2], lat[(len(lat)*99+99)/100-1], lat[len(lat)-1]
}

// IperfRun is one iperf3 TCP measurement.
type IperfRun struct {
	Bps         float64 // received
	Bytes       int64   // received
	Seconds     float64
	Retransmits int
	// CPU is the user+system time of the iperf3 client and server
	// (kernel work their sockets did in their context included).
	CPU time.Duration
}

// parseIperfRun reads a TCP client's JSON report.
func parseIperfRun(data []byte) (IperfRun, error) {
	var rep struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				Seconds       float64 `json:"seconds"`
				Bytes         int64   `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(data, &rep); err != nil {
		return IperfRun{}, fmt.Errorf("iperf3 report: %w", err)
	}
	if rep.Error != "" {
		return IperfRun{}, fmt.Errorf("iperf3: %s", rep.Error)
	}
	r := rep.End.SumReceived
	if r.BitsPerSecond <= 0 || r.Bytes <= 0 {
		return IperfRun{}, errors.New("iperf3 report has no received throughput")
	}
	return IperfRun{Bps: r.BitsPerSecond, Bytes: r.Bytes, Seconds: r.Seconds, Retransmits: rep.End.SumSent.Retransmits}, nil
}
