package wireguard

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// RecentHandshake is how old a peer's last handshake may be for its
// session to be alive: WireGuard rejects a session after 180 s without one
// (REJECT_AFTER_TIME), and rekeys every 120 s while there is traffic.
const RecentHandshake = 180 * time.Second

// Stats is the devices' state as /metrics shows it.
type Stats struct {
	Implementation string // kernel or userspace; "" before a device exists
	Devices        []DeviceStats
}

// DeviceStats is one device's state.
type DeviceStats struct {
	Name  string // flannel-wg, flannel-wg-v6
	Peers int
	// RecentHandshakes counts peers whose last handshake is younger than
	// RecentHandshake.
	RecentHandshakes int
	// Handshakes counts the handshakes seen complete (a peer's last
	// handshake time moved) since weftd started.
	Handshakes uint64
	RxBytes    uint64
	TxBytes    uint64
	// Dropped counts packets dropped, by reason: the device's link
	// counters (link_rx, link_tx) and, for the userspace device, what
	// wireguard-go refused (invalid_handshake: not a peer or a wrong key;
	// disallowed_source: an inner source outside the peer's AllowedIPs;
	// invalid_mac1, invalid_cookie, unknown_type).
	Dropped map[string]uint64
}

// handshakes tracks peers' last handshake times to count new handshakes.
type handshakes struct {
	mu    sync.Mutex
	last  map[wgtypes.Key]time.Time
	count uint64
}

// observe counts the peers whose handshake time moved since the previous
// call and returns the total and the peers with a recent one.
func (h *handshakes) observe(peers []wgtypes.Peer, now time.Time) (total uint64, recent int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	next := make(map[wgtypes.Key]time.Time, len(peers))
	for _, p := range peers {
		t := p.LastHandshakeTime
		next[p.PublicKey] = t
		if !t.IsZero() && t.After(h.last[p.PublicKey]) {
			h.count++
		}
		if !t.IsZero() && now.Sub(t) < RecentHandshake {
			recent++
		}
	}
	h.last = next
	return h.count, recent
}

// dropReasons maps wireguard-go's log formats for refused packets to the
// reason they are counted under. The formats are constants of its source;
// it has no counters of its own.
var dropReasons = map[string]string{
	"Received invalid initiation message from %s":        "invalid_handshake",
	"Received invalid response message from %s":          "invalid_handshake",
	"Received packet with invalid mac1":                  "invalid_mac1",
	"IPv4 packet with disallowed source address from %v": "disallowed_source",
	"IPv6 packet with disallowed source address from %v": "disallowed_source",
	"Could not decrypt invalid cookie response":          "invalid_cookie",
	"Failed to decode cookie reply":                      "invalid_cookie",
	"Received message with unknown type":                 "unknown_type",
}

// userDrops counts what the userspace device refused, from its log.
type userDrops struct {
	invalidHandshake, invalidMAC1, disallowedSource, invalidCookie, unknownType atomic.Uint64
}

func (d *userDrops) count(format string) bool {
	var c *atomic.Uint64
	switch dropReasons[format] {
	case "invalid_handshake":
		c = &d.invalidHandshake
	case "invalid_mac1":
		c = &d.invalidMAC1
	case "disallowed_source":
		c = &d.disallowedSource
	case "invalid_cookie":
		c = &d.invalidCookie
	case "unknown_type":
		c = &d.unknownType
	default:
		return false
	}
	c.Add(1)
	return true
}

func (d *userDrops) into(m map[string]uint64) {
	m["invalid_handshake"] = d.invalidHandshake.Load()
	m["invalid_mac1"] = d.invalidMAC1.Load()
	m["disallowed_source"] = d.disallowedSource.Load()
	m["invalid_cookie"] = d.invalidCookie.Load()
	m["unknown_type"] = d.unknownType.Load()
}

// collector exports Stats, read at scrape time, one series per device.
type collector struct {
	stats                                           func() Stats
	info, peers, recent, handshakes, bytes, dropped *prometheus.Desc
}

func newCollector(stats func() Stats) *collector {
	dev := []string{"device"}
	return &collector{
		stats:      stats,
		info:       prometheus.NewDesc("weft_wireguard_device_info", "The WireGuard devices weftd runs: the kernel's or wireguard-go in weftd (userspace).", []string{"device", "implementation"}, nil),
		peers:      prometheus.NewDesc("weft_wireguard_peers", "Peers configured on the WireGuard device.", dev, nil),
		recent:     prometheus.NewDesc("weft_wireguard_peers_recent_handshake", "Peers whose last handshake is younger than 180 s (a live session).", dev, nil),
		handshakes: prometheus.NewDesc("weft_wireguard_handshakes_total", "Handshakes seen complete since weftd started.", dev, nil),
		bytes:      prometheus.NewDesc("weft_wireguard_bytes_total", "Bytes the WireGuard device sent to and received from its peers.", []string{"device", "direction"}, nil),
		dropped:    prometheus.NewDesc("weft_wireguard_dropped_total", "Packets the WireGuard device dropped, by reason.", []string{"device", "reason"}, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.info, c.peers, c.recent, c.handshakes, c.bytes, c.dropped} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	for _, d := range s.Devices {
		if s.Implementation != "" {
			ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, d.Name, s.Implementation)
		}
		ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(d.Peers), d.Name)
		ch <- prometheus.MustNewConstMetric(c.recent, prometheus.GaugeValue, float64(d.RecentHandshakes), d.Name)
		ch <- prometheus.MustNewConstMetric(c.handshakes, prometheus.CounterValue, float64(d.Handshakes), d.Name)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(d.TxBytes), d.Name, "tx")
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(d.RxBytes), d.Name, "rx")
		for reason, v := range d.Dropped {
			ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(v), d.Name, reason)
		}
	}
}

// isRoutine tells wireguard-go's chatter about its goroutines, which is
// not worth a debug line per worker.
func isRoutine(format string) bool { return strings.Contains(format, "Routine:") }
