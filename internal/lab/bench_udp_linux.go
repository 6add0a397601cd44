package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/config"
)

// Iperf runs a one-shot iperf3 server in serverNS and a client in clientNS
// sending to addr over streams parallel TCP connections for d.
func Iperf(ctx context.Context, clientNS, serverNS string, addr netip.Addr, d time.Duration, streams int) (IperfRun, error) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return IperfRun{}, fmt.Errorf("needs iperf3 (`make deps` installs it): %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	port := strconv.Itoa(iperfPort)
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", serverNS, "iperf3", "-s", "-1", "-p", port)
	srv.WaitDelay = time.Second
	var srvOut strings.Builder
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		return IperfRun{}, fmt.Errorf("iperf3 server in %s: %w", serverNS, err)
	}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Wait() }()
	srvWaited := false
	defer func() {
		if !srvWaited {
			cancel() // the client never came: stop the server
			<-srvDone
		}
	}()
	err := poll(ctx, 20*time.Millisecond, func() error {
		select {
		case err := <-srvDone:
			srvWaited = true
			return permanent(fmt.Errorf("iperf3 server in %s exited: %v: %s", serverNS, err, srvOut.String()))
		default:
		}
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", serverNS, "ss", "-Hltn", "sport = :"+port).Output()
		if err != nil {
			return err
		}
		if len(strings.TrimSpace(string(out))) == 0 {
			return fmt.Errorf("iperf3 server in %s not listening", serverNS)
		}
		return nil
	})
	if err != nil {
		return IperfRun{}, err
	}
	secs := strconv.Itoa(max(1, int(d.Round(time.Second).Seconds())))
	cli := exec.CommandContext(ctx, "ip", "netns", "exec", clientNS,
		"iperf3", "-c", addr.String(), "-p", port, "-t", secs, "-P", strconv.Itoa(max(streams, 1)), "-J")
	cli.WaitDelay = time.Second
	out, cerr := cli.Output()
	run, perr := parseIperfRun(out)
	if perr != nil {
		return IperfRun{}, fmt.Errorf("iperf3 %s -> %s: %w", clientNS, addr, errors.Join(cerr, perr))
	}
	// The one-shot server exits once the client is done.
	select {
	case <-srvDone:
		srvWaited = true
	case <-time.After(5 * time.Second):
		return IperfRun{}, fmt.Errorf("iperf3 server in %s did not exit after the test", serverNS)
	}
	run.CPU = cpuOf(cli.ProcessState) + cpuOf(srv.ProcessState)
	return run, nil
}

// cpuOf is a finished process's user+system time. `ip netns exec` execs
// the command, so this is the command's own.
func cpuOf(ps *os.ProcessState) time.Duration {
	if ps == nil {
		return 0
	}
	return ps.UserTime() + ps.SystemTime()
}

// cpuSample is what the udp benchmark reads around each run.
type cpuSample struct {
	machine time.Duration // every CPU busy, /proc/stat
	agents  time.Duration // every weftd of the lab
}

func (l *Lab) sampleCPU() (cpuSample, error) {
	var s cpuSample
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s, err
	}
	if s.machine, err = parseMachineCPU(stat); err != nil {
		return s, err
	}
	for i := range l.Nodes {
		pid, err := l.AgentPID(i + 1)
		if err != nil {
			return s, err
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return s, fmt.Errorf("node %d weftd: %w", i+1, err)
		}
		c, err := parsePIDStatCPU(data)
		if err != nil {
			return s, fmt.Errorf("node %d weftd: %w", i+1, err)
		}
		s.agents += c
	}
	return s, nil
}

// flowFigure is the best of a kind of run, with the CPU it took.
type flowFigure struct {
	run        IperfRun
	procCPU    time.Duration // iperf3 client + server + every weftd
	machineCPU time.Duration
}

func (f flowFigure) perGB(cpu time.Duration) float64 {
	return cpu.Seconds() / (float64(f.run.Bytes) / 1e9)
}

// The udp backend's throughput targets, relative to vxlan's single stream.
const (
	targetUDPRatio  = 0.3
	stretchUDPRatio = 0.6
)

// udpBenchmark compares pod-to-pod TCP over the udp backend with vxlan and
// the bare underlay: one stream and four, each with the CPU time it took
// per gigabyte received. It runs in the udp lab of a suite, beside a vxlan
// lab of its own, the two measured in turns.
func udpBenchmark() Benchmark {
	return Benchmark{
		Name:     "udp",
		Backends: []string{config.BackendUDP},
		Run: func(ctx context.Context, l *Lab, o BenchOptions) ([]Result, error) {
			figs, results, err := flowsBeside(ctx, l, o, "udp", config.BackendVXLAN)
			if err != nil {
				return results, err
			}
			udp, vx := figs[0], figs[1]
			single := udp["pod1"].run.Bps / vx["pod1"].run.Bps
			note := fmt.Sprintf("%s target ≥ %.1f; stretch ≥ %.1f %s; measured in turns with vxlan", verdict(single, targetUDPRatio, false), targetUDPRatio,
				stretchUDPRatio, map[bool]string{true: "met", false: "not met"}[single >= stretchUDPRatio])
			return append(results,
				Result{Section: "udp", Metric: "udp / vxlan, 1 stream", Value: single, Unit: "×", Note: note},
				Result{Section: "udp", Metric: "udp / vxlan, 4 streams", Value: udp["pod4"].run.Bps / vx["pod4"].run.Bps, Unit: "×"},
				Result{Section: "udp", Metric: "udp / vxlan CPU per GB, 1 stream", Value: udp["pod1"].perGB(udp["pod1"].procCPU) / vx["pod1"].perGB(vx["pod1"].procCPU), Unit: "×",
					Note: "weftd + iperf3 CPU seconds per GB, udp over vxlan"},
			), nil
		},
	}
}

// flowsBeside measures the flows of l and of a lab of each backend in
// beside, brought up with l's settings for the purpose: in turns, so that
// the figures compared come from one stretch of time on this machine
// (throughput here moves by a fifth from one minute to the next). It
// returns the best figures of each lab, l's first, and their results
// under section.
func flowsBeside(ctx context.Context, l *Lab, o BenchOptions, section string, beside ...string) ([]map[string]flowFigure, []Result, error) {
	labs := []*Lab{l}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		for _, b := range labs[1:] {
			_ = b.Down(dctx, DownOptions{})
		}
	}()
	for _, be := range beside {
		lo := o.Lab
		lo.Backend, lo.UnderlayGSO, lo.IPFamily = be, l.UnderlayGSO, l.familyName()
		lo.Nodes = len(l.Nodes) // as alike as the backend allows
		lo.Name, lo.Dir = "", ""
		o.progress("  lab up beside it: %s", be)
		b, err := Up(ctx, lo)
		if err != nil {
			return nil, nil, fmt.Errorf("%s lab beside %s: %w", be, l.Backend, err)
		}
		labs = append(labs, b)
	}
	figs, err := measureFlows(ctx, labs, o)
	if err != nil {
		return nil, nil, err
	}
	var out []Result
	for i, b := range labs {
		out = append(out, flowResults(section, b, figs[i], o, i == 0)...)
	}
	return figs, out, nil
}

// flowKind is one flow measureFlows runs: TCP from a namespace to an
// address in another, over streams connections.
type flowKind struct {
	name, from, to string
	addr           netip.Addr
	streams        int
}

// measureFlows measures, node 1 to node 2 of each lab, pod to pod with one
// and four streams, and, in the first lab only, the bare underlay with
// one stream: rounds times each, every lab's in turn, rotated so that no
// flow always goes first; the best of each counts.
func measureFlows(ctx context.Context, labs []*Lab, o BenchOptions) ([]map[string]flowFigure, error) {
	type flow struct {
		lab int
		k   flowKind
	}
	var flows []flow
	for i, l := range labs {
		if len(l.Nodes) < 2 || len(l.Nodes[0].Pods) == 0 || len(l.Nodes[1].Pods) == 0 {
			return nil, fmt.Errorf("lab %s: needs 2 nodes with a pod each", l.Name)
		}
		n1, n2 := l.Nodes[0], l.Nodes[1]
		p1, p2 := n1.Pods[0], n2.Pods[0]
		if i == 0 {
			flows = append(flows, flow{i, flowKind{"bare1", n1.NS, n2.NS, n2.PublicIP, 1}})
		}
		flows = append(flows,
			flow{i, flowKind{"pod1", p1.NS, p2.NS, p2.IP, 1}},
			flow{i, flowKind{"pod4", p1.NS, p2.NS, p2.IP, 4}})
	}
	d := o.duration()
	best := make([]map[string]flowFigure, len(labs))
	for i := range best {
		best[i] = map[string]flowFigure{}
	}
	for r := 0; r < o.rounds(); r++ {
		for i := range flows {
			f := flows[(i+r)%len(flows)]
			l := labs[f.lab]
			s0, err := l.sampleCPU()
			if err != nil {
				return nil, err
			}
			run, err := Iperf(ctx, f.k.from, f.k.to, f.k.addr, d, f.k.streams)
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", l.Backend, f.k.name, err)
			}
			s1, err := l.sampleCPU()
			if err != nil {
				return nil, err
			}
			fig := flowFigure{run: run, procCPU: run.CPU + s1.agents - s0.agents, machineCPU: s1.machine - s0.machine}
			o.progress("  %-9s %-5s %6.2f Gbit/s, %.2f CPU s/GB (procs), %.2f (machine)", l.Backend, f.k.name, run.Bps/1e9, fig.perGB(fig.procCPU), fig.perGB(fig.machineCPU))
			if run.Bps > best[f.lab][f.k.name].run.Bps {
				best[f.lab][f.k.name] = fig
			}
		}
	}
	return best, nil
}

// flowResults are the figures measureFlows took in l, with the bare
// underlay's when bare.
func flowResults(section string, l *Lab, best map[string]flowFigure, o BenchOptions, bare bool) []Result {
	settings := fmt.Sprintf("iperf3 -t %d, best of %d", int(o.duration().Seconds()), o.rounds())
	be := l.Backend
	var out []Result
	add := func(metric, kind, note string) {
		f := best[kind]
		out = append(out, Result{Section: section, Metric: metric, Value: f.run.Bps / 1e9, Unit: "Gbit/s",
			Note: fmt.Sprintf("%s; %d retransmits", note, f.run.Retransmits)})
	}
	cpu := func(metric, kind, who string) {
		f := best[kind]
		out = append(out, Result{Section: section, Metric: metric, Value: f.perGB(f.procCPU), Unit: "CPU s/GB",
			Note: fmt.Sprintf("%s; whole machine (/proc/stat, others' load included): %.2f", who, f.perGB(f.machineCPU))})
	}
	if bare {
		add(fmt.Sprintf("bare underlay n1→n2, 1 stream (%s lab)", be), "bare1", settings)
		cpu(fmt.Sprintf("bare underlay CPU per GB, 1 stream (%s lab)", be), "bare1", "iperf3 client + server + every weftd")
	}
	add(fmt.Sprintf("%s pod→pod, 1 stream", be), "pod1", settings)
	cpu(fmt.Sprintf("%s CPU per GB, 1 stream", be), "pod1", "iperf3 client + server + every weftd")
	add(fmt.Sprintf("%s pod→pod, 4 streams", be), "pod4", settings+", -P 4")
	cpu(fmt.Sprintf("%s CPU per GB, 4 streams", be), "pod4", "iperf3 client + server + every weftd")
	return out
}
