package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/weft-net/weft/internal/readyfile"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// health is what /healthz and /readyz report.
type health struct {
	mu     sync.Mutex
	beat   time.Time // last time a loop of the daemon made progress
	ready  bool
	reason string // why not ready
	stale  time.Duration
	now    func() time.Time

	// marker is the readiness file the CNI plugin's STATUS reads; each
	// vouch keeps it valid for markFor. Empty: no marker.
	marker  string
	markFor time.Duration
	log     *slog.Logger
	// onNotReady, when set, hears every reason given to notReady.
	onNotReady func(reason string)
}

func newHealth(stale time.Duration) *health {
	return &health{stale: stale, now: time.Now, beat: time.Now(), reason: "starting", log: slog.Default()}
}

// alive records that the daemon's loop is turning.
func (h *health) alive() {
	h.mu.Lock()
	h.beat = h.now()
	h.mu.Unlock()
}

// notReady records why the node cannot serve pods yet (or any more).
func (h *health) notReady(reason string) {
	h.mu.Lock()
	was := h.ready
	h.ready, h.reason, h.beat = false, reason, h.now()
	h.mu.Unlock()
	if h.onNotReady != nil {
		h.onNotReady(reason)
	}
	if was && h.marker != "" {
		if err := readyfile.Clear(h.marker); err != nil {
			h.log.Warn("clearing readiness marker", "err", err)
		}
	}
}

// setReady writes the marker before /readyz says ready, so that whoever
// sees one also finds the other.
func (h *health) setReady() {
	if h.marker != "" {
		if err := readyfile.Mark(h.marker, h.now().Add(h.markFor)); err != nil {
			h.log.Warn("writing readiness marker", "err", err)
		}
	}
	h.mu.Lock()
	h.ready, h.reason, h.beat = true, "", h.now()
	h.mu.Unlock()
}

// vouch renews the readiness marker while ready; called after every
// successful full reconcile, so the marker of a dead agent goes stale.
func (h *health) vouch() {
	if h.marker == "" || !h.isReady() {
		return
	}
	if err := readyfile.Mark(h.marker, h.now().Add(h.markFor)); err != nil {
		h.log.Warn("writing readiness marker", "err", err)
	}
}

func (h *health) isReady() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ready
}

// live reports whether the loop has turned recently.
func (h *health) live() (bool, time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	since := h.now().Sub(h.beat)
	return since <= h.stale, since
}

func (h *health) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	if ok, since := h.live(); !ok {
		http.Error(w, fmt.Sprintf("daemon loop stuck: no progress for %s", since.Round(time.Second)), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (h *health) serveReadyz(w http.ResponseWriter, _ *http.Request) {
	h.mu.Lock()
	ready, reason := h.ready, h.reason
	h.mu.Unlock()
	if !ready {
		http.Error(w, "not ready: "+reason, http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// metrics are the daemon's own, in a registry it owns.
type metrics struct {
	reg           *prometheus.Registry
	leases        prometheus.Gauge
	reconcileDur  *prometheus.HistogramVec
	reconcileErrs *prometheus.CounterVec
	lastReconcile prometheus.Gauge
	leaseExpiry   prometheus.Gauge
	configErrs    prometheus.Counter
	refused       prometheus.Gauge
	repairs       prometheus.Counter
	subnetChanges prometheus.Counter
	storeUp       prometheus.Gauge
	storeLastOK   prometheus.Gauge
	refusals      prometheus.Counter
	info          *prometheus.GaugeVec
}

func newMetrics() *metrics {
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m := &metrics{
		reg:    prometheus.NewRegistry(),
		leases: gauge("weft_leases", "Leases known to this node, its own included."),
		reconcileDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "weft_reconcile_duration_seconds",
			Help:    "Time to converge the datapath to the lease set.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"mode"}),
		reconcileErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_reconcile_errors_total", Help: "Reconciles that failed.",
		}, []string{"mode"}),
		lastReconcile: gauge("weft_last_reconcile_success_timestamp_seconds", "Unix time of the last successful reconcile."),
		leaseExpiry:   gauge("weft_lease_expiration_timestamp_seconds", "Unix time this node's lease expires unless renewed; 0 for a reservation."),
		configErrs:    counter("weft_config_errors_total", "Reads of the network config that found it missing or invalid."),
		refused:       gauge("weft_leases_refused", "Leases in the store this node refuses to program (not subnet-sized, outside the network, overlapping its own subnet or an older lease)."),
		storeUp:       gauge("weft_store_up", "1 while the lease store answers this agent's probes, 0 during an outage."),
		storeLastOK:   gauge("weft_store_last_success_timestamp_seconds", "Unix time the lease store last answered a probe."),
		subnetChanges: counter("weft_subnet_changes_total", "Times this node's subnet changed while pods may hold addresses in the old one."),
		repairs:       counter("weft_repairs_total", "Full reconciles run because the kernel lost part of the datapath (a route, neighbour, FDB entry, address or device deleted; a device down)."),
		refusals:      counter("weft_lease_refusals_total", "Leases refused, counted once per lease and reason."),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "weft_info", Help: "Always 1: the backend and version this agent runs.",
		}, []string{"backend", "version"}),
	}
	m.reg.MustRegister(m.leases, m.reconcileDur, m.reconcileErrs, m.lastReconcile, m.leaseExpiry, m.configErrs, m.refused, m.refusals, m.repairs, m.subnetChanges, m.info,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, mode := range []string{modeFull, modeIncremental} {
		m.reconcileErrs.WithLabelValues(mode) // export zero before the first error
	}
	return m
}

const (
	modeFull        = "full"
	modeIncremental = "incremental"
)

func mode(full bool) string {
	if full {
		return modeFull
	}
	return modeIncremental
}

// serveHealth listens on ip:port and serves until ctx ends. It returns once
// listening, so that a port in use is an error at start.
func serveHealth(ctx context.Context, ip string, port int, h *health, m *metrics, log *slog.Logger) (addr net.Addr, wait func(), err error) {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", h.serveHealthz)
	mux.HandleFunc("/readyz", h.serveReadyz)
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		return nil, nil, fmt.Errorf("health server: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health server stopped", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Info("serving /healthz, /readyz and /metrics", "addr", ln.Addr().String())
	return ln.Addr(), func() { <-done }, nil
}
