package udp

import (
	"github.com/prometheus/client_golang/prometheus"
)

// collector exports the datapath's counters, read at scrape time so the
// hot path pays nothing for metrics.
type collector struct {
	stats   func() Stats
	packets *prometheus.Desc
	bytes   *prometheus.Desc
	dropped *prometheus.Desc
	icmp    *prometheus.Desc
	errs    *prometheus.Desc
	restart *prometheus.Desc
}

func newCollector(stats func() Stats) *collector {
	return &collector{
		stats:   stats,
		packets: prometheus.NewDesc("weft_udp_packets_total", "Inner packets forwarded by the udp datapath.", []string{"direction"}, nil),
		bytes:   prometheus.NewDesc("weft_udp_bytes_total", "Inner bytes forwarded by the udp datapath.", []string{"direction"}, nil),
		dropped: prometheus.NewDesc("weft_udp_dropped_total", "Packets and datagrams the udp datapath dropped, by reason.", []string{"reason"}, nil),
		icmp:    prometheus.NewDesc("weft_udp_icmp_sent_total", "ICMP errors the udp datapath sent back to senders.", nil, nil),
		errs:    prometheus.NewDesc("weft_udp_io_errors_total", "Failed reads and writes on flannel0 and the socket.", []string{"op"}, nil),
		restart: prometheus.NewDesc("weft_udp_device_restarts_total", "Times flannel0 was re-created after it vanished.", nil, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.packets, c.bytes, c.dropped, c.icmp, c.errs, c.restart} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(c.packets, s.TxPackets, "tx")
	counter(c.packets, s.RxPackets, "rx")
	counter(c.bytes, s.TxBytes, "tx")
	counter(c.bytes, s.RxBytes, "rx")
	for reason, v := range map[string]uint64{
		"no_route": s.NoRoute, "too_big": s.TooBig, "ttl_expired": s.TTLExpired, "not_ipv4": s.NotIPv4,
		"tun_malformed": s.TUNMalformed, "unknown_sender": s.UnknownSender, "spoofed_source": s.Spoofed,
		"wrong_destination": s.WrongDest, "malformed": s.Malformed,
	} {
		counter(c.dropped, v, reason)
	}
	counter(c.icmp, s.ICMPSent)
	counter(c.errs, s.SendErrors, "send")
	counter(c.errs, s.WriteErrors, "tun_write")
	counter(c.errs, s.ReadErrors, "read")
	counter(c.restart, s.Restarts)
}
