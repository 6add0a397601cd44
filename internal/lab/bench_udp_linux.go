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
	"sync"
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
// per gigabyte received. It runs in the vxlan lab and in the udp lab of a
// suite; the udp run reports the ratios to the vxlan run's figures, which
// the returned Benchmark keeps between the two.
func udpBenchmark(fr *flowRuns) Benchmark {
	mu, seen := &fr.mu, fr.seen
	return Benchmark{
		Name:     "udp",
		Backends: []string{config.BackendVXLAN, config.BackendUDP},
		Run: func(ctx context.Context, l *Lab, o BenchOptions) ([]Result, error) {
			figs, results, err := benchFlows(ctx, l, o)
			if err != nil {
				return results, err
			}
			mu.Lock()
			seen[l.Backend] = figs
			vx, haveVX := seen[config.BackendVXLAN]
			mu.Unlock()
			if l.Backend != config.BackendUDP {
				return results, nil
			}
			if !haveVX {
				return append(results, Result{Section: "udp", Metric: "udp / vxlan", Unit: "×",
					Note: "no vxlan figures in this run (run the suite: `weft lab bench --all`)"}), nil
			}
			single := figs["pod1"].run.Bps / vx["pod1"].run.Bps
			note := fmt.Sprintf("%s target ≥ %.1f; stretch ≥ %.1f %s", verdict(single, targetUDPRatio, false), targetUDPRatio,
				stretchUDPRatio, map[bool]string{true: "met", false: "not met"}[single >= stretchUDPRatio])
			results = append(results,
				Result{Section: "udp", Metric: "udp / vxlan, 1 stream", Value: single, Unit: "×", Note: note},
				Result{Section: "udp", Metric: "udp / vxlan, 4 streams", Value: figs["pod4"].run.Bps / vx["pod4"].run.Bps, Unit: "×"},
				Result{Section: "udp", Metric: "udp / vxlan CPU per GB, 1 stream", Value: figs["pod1"].perGB(figs["pod1"].procCPU) / vx["pod1"].perGB(vx["pod1"].procCPU), Unit: "×",
					Note: "weftd + iperf3 CPU seconds per GB, udp over vxlan"},
			)
			return results, nil
		},
	}
}

// flowRuns keeps benchFlows' figures per backend across the labs of one
// suite, so that the udp and wireguard benchmarks compare with vxlan's.
type flowRuns struct {
	mu   sync.Mutex
	seen map[string]map[string]flowFigure // backend -> kind -> best
}

// benchFlows measures, node 1 to node 2, the bare underlay with one stream
// and pod to pod with one and four streams, rounds times each, interleaved;
// the best of each counts.
func benchFlows(ctx context.Context, l *Lab, o BenchOptions) (map[string]flowFigure, []Result, error) {
	if len(l.Nodes) < 2 || len(l.Nodes[0].Pods) == 0 || len(l.Nodes[1].Pods) == 0 {
		return nil, nil, errors.New("needs 2 nodes with a pod each")
	}
	n1, n2 := l.Nodes[0], l.Nodes[1]
	p1, p2 := n1.Pods[0], n2.Pods[0]
	d := o.duration()
	type kind struct {
		name, from, to string
		addr           netip.Addr
		streams        int
	}
	kinds := []kind{
		{"bare1", n1.NS, n2.NS, n2.PublicIP, 1},
		{"pod1", p1.NS, p2.NS, p2.IP, 1},
		{"pod4", p1.NS, p2.NS, p2.IP, 4},
	}
	best := map[string]flowFigure{}
	for r := 0; r < o.rounds(); r++ {
		for i := range kinds {
			k := kinds[(i+r)%len(kinds)] // rotate, so that no kind always goes first
			s0, err := l.sampleCPU()
			if err != nil {
				return nil, nil, err
			}
			run, err := Iperf(ctx, k.from, k.to, k.addr, d, k.streams)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", k.name, err)
			}
			s1, err := l.sampleCPU()
			if err != nil {
				return nil, nil, err
			}
			f := flowFigure{run: run, procCPU: run.CPU + s1.agents - s0.agents, machineCPU: s1.machine - s0.machine}
			o.progress("  %-5s %6.2f Gbit/s, %.2f CPU s/GB (procs), %.2f (machine)", k.name, run.Bps/1e9, f.perGB(f.procCPU), f.perGB(f.machineCPU))
			if run.Bps > best[k.name].run.Bps {
				best[k.name] = f
			}
		}
	}
	settings := fmt.Sprintf("iperf3 -t %d, best of %d", int(d.Seconds()), o.rounds())
	be := l.Backend
	var out []Result
	add := func(metric, kind, note string) {
		f := best[kind]
		out = append(out, Result{Section: "udp", Metric: metric, Value: f.run.Bps / 1e9, Unit: "Gbit/s",
			Note: fmt.Sprintf("%s; %d retransmits", note, f.run.Retransmits)})
	}
	cpu := func(metric, kind, who string) {
		f := best[kind]
		out = append(out, Result{Section: "udp", Metric: metric, Value: f.perGB(f.procCPU), Unit: "CPU s/GB",
			Note: fmt.Sprintf("%s; whole machine (/proc/stat, others' load included): %.2f", who, f.perGB(f.machineCPU))})
	}
	add(fmt.Sprintf("bare underlay n1→n2, 1 stream (%s lab)", be), "bare1", settings)
	cpu(fmt.Sprintf("bare underlay CPU per GB, 1 stream (%s lab)", be), "bare1", "iperf3 client + server + every weftd")
	add(fmt.Sprintf("%s pod→pod, 1 stream", be), "pod1", settings)
	cpu(fmt.Sprintf("%s CPU per GB, 1 stream", be), "pod1", "iperf3 client + server + every weftd")
	add(fmt.Sprintf("%s pod→pod, 4 streams", be), "pod4", settings+", -P 4")
	cpu(fmt.Sprintf("%s CPU per GB, 4 streams", be), "pod4", "iperf3 client + server + every weftd")
	return best, out, nil
}
