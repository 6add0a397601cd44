package daemon

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/backend/hostgw"
	"github.com/weft-net/weft/internal/backend/udp"
	"github.com/weft-net/weft/internal/backend/vxlan"
	"github.com/weft-net/weft/internal/backend/wireguard"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/netlinkx"
)

// The backends whose full pass reads the kernel off the event loop.
var (
	_ readAheader = (*vxlan.Backend)(nil)
	_ readAheader = (*hostgw.Backend)(nil)
)

// newBackend builds the backend the network config names.
func newBackend(typ string, p backend.Params, h *netlinkx.Handle, log *slog.Logger) (backend.Backend, error) {
	switch typ {
	case config.BackendVXLAN:
		return vxlan.New(p, h, log)
	case config.BackendHostGW:
		return hostgw.New(p, h, log)
	case config.BackendUDP:
		limitProcs(log, config.BackendUDP)
		return udp.New(p, h, log)
	case config.BackendWireGuard:
		// flannel's variable names the key file.
		return wireguard.New(p, h, log, wireguard.Options{
			KeyFile: os.Getenv(wireguard.KeyFileEnv),
			// wireguard-go's pipeline, like the udp datapath, runs best on
			// half the CPUs; the kernel's device does no work in Go.
			OnUserspace: func() { limitProcs(log, "wireguard userspace device") },
		})
	default:
		return nil, fmt.Errorf("unknown backend type %q", typ)
	}
}

// registerBackendMetrics adds the collectors be exports, if any, to reg.
func registerBackendMetrics(reg prometheus.Registerer, be backend.Backend) error {
	mx, ok := be.(backend.MetricsExporter)
	if !ok {
		return nil
	}
	for _, c := range mx.Collectors() {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	return nil
}

// limitProcs runs a userspace datapath's Go code (the udp backend's,
// wireguard-go's) on half the CPUs, unless GOMAXPROCS is set. Much of the
// datapath's cost is kernel work done in the context of its system calls
// and in softirqs; on a 2-CPU node one P moved about 20% more for udp (and
// used 11-17% less CPU per GB) than two, whose forwarding loops kept
// preempting that work and the pods. wireguard-go hands each batch between
// goroutines (reader, crypto workers, sequential sender/receiver): with one
// P those handoffs stay on one thread instead of waking another, and it
// used about half the CPU per GB.
func limitProcs(log *slog.Logger, what string) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	n := max(1, runtime.NumCPU()/2)
	if n < runtime.GOMAXPROCS(0) {
		runtime.GOMAXPROCS(n)
		log.Info(what+": limiting Go to half the CPUs (set GOMAXPROCS to override)", "gomaxprocs", n, "cpus", runtime.NumCPU())
	}
}
