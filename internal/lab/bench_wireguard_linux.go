package lab

import (
	"context"
	"fmt"
	"strings"

	"github.com/weft-net/weft/internal/config"
)

// The targets for wireguard pod to pod, one stream: at least 0.8 ×
// weft's udp backend and 0.3 × vxlan; the stretch is 0.5 × vxlan.
const (
	targetWGOverUDP     = 0.8
	targetWGOverVXLAN   = 0.3
	stretchWGOverVXLAN  = 0.5
	wireguardBenchLabel = "wireguard"
)

// wireguardBenchmark measures pod-to-pod TCP over the wireguard backend
// (one stream and four, CPU seconds per GB) beside a udp and a vxlan lab of
// its own, all three in turns, and sets it against their figures.
func wireguardBenchmark() Benchmark {
	return Benchmark{
		Name:     wireguardBenchLabel,
		Backends: []string{config.BackendWireGuard},
		Run: func(ctx context.Context, l *Lab, o BenchOptions) ([]Result, error) {
			all, results, err := flowsBeside(ctx, l, o, wireguardBenchLabel, config.BackendUDP, config.BackendVXLAN)
			if err != nil {
				return results, err
			}
			figs, udp, vx := all[0], all[1], all[2]
			results = append(results, Result{Section: wireguardBenchLabel, Metric: "device", Note: wireguardImpl(ctx, l) +
				"; flannel's wireguard needs the kernel's device and cannot run without it"})
			ratio := func(metric string, other map[string]flowFigure, kind string, note string) {
				results = append(results, Result{Section: wireguardBenchLabel, Metric: metric,
					Value: figs[kind].run.Bps / other[kind].run.Bps, Unit: "×", Note: note})
			}
			overUDP := figs["pod1"].run.Bps / udp["pod1"].run.Bps
			overVX := figs["pod1"].run.Bps / vx["pod1"].run.Bps
			ratio("wireguard / udp, 1 stream", udp, "pod1", fmt.Sprintf("%s target ≥ %.1f; measured in turns with udp and vxlan", verdict(overUDP, targetWGOverUDP, false), targetWGOverUDP))
			ratio("wireguard / udp, 4 streams", udp, "pod4", "")
			ratio("wireguard / vxlan, 1 stream", vx, "pod1", fmt.Sprintf("%s target ≥ %.1f; stretch ≥ %.1f %s", verdict(overVX, targetWGOverVXLAN, false),
				targetWGOverVXLAN, stretchWGOverVXLAN, map[bool]string{true: "met", false: "not met"}[overVX >= stretchWGOverVXLAN]))
			ratio("wireguard / vxlan, 4 streams", vx, "pod4", "")
			results = append(results, Result{Section: wireguardBenchLabel, Metric: "wireguard / udp CPU per GB, 1 stream",
				Value: figs["pod1"].perGB(figs["pod1"].procCPU) / udp["pod1"].perGB(udp["pod1"].procCPU), Unit: "×",
				Note: "weftd + iperf3 CPU seconds per GB"})
			return results, nil
		},
	}
}

// wireguardImpl is the device node 1's weftd runs, from its /metrics.
func wireguardImpl(ctx context.Context, l *Lab) string {
	out, err := nsExec(ctx, l.Nodes[0].NS, "curl", "-s", fmt.Sprintf("http://127.0.0.1:%d/metrics", healthzPort))
	if err != nil {
		return "unknown: " + err.Error()
	}
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "weft_wireguard_device_info{"); ok {
			if _, impl, ok := strings.Cut(rest, `implementation="`); ok {
				impl, _, _ = strings.Cut(impl, `"`)
				return impl
			}
		}
	}
	return "unknown (no weft_wireguard_device_info on node 1's /metrics)"
}
