package udp

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCollector(t *testing.T) {
	c := newCollector(func() Stats {
		return Stats{TxPackets: 7, RxPackets: 5, Spoofed: 2, UnknownSender: 3, ICMPSent: 1}
	})
	want := `
# HELP weft_udp_dropped_total Packets and datagrams the udp datapath dropped, by reason.
# TYPE weft_udp_dropped_total counter
weft_udp_dropped_total{reason="malformed"} 0
weft_udp_dropped_total{reason="no_route"} 0
weft_udp_dropped_total{reason="not_ipv4"} 0
weft_udp_dropped_total{reason="spoofed_source"} 2
weft_udp_dropped_total{reason="too_big"} 0
weft_udp_dropped_total{reason="ttl_expired"} 0
weft_udp_dropped_total{reason="tun_malformed"} 0
weft_udp_dropped_total{reason="unknown_sender"} 3
weft_udp_dropped_total{reason="wrong_destination"} 0
# HELP weft_udp_packets_total Inner packets forwarded by the udp datapath.
# TYPE weft_udp_packets_total counter
weft_udp_packets_total{direction="rx"} 5
weft_udp_packets_total{direction="tx"} 7
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "weft_udp_dropped_total", "weft_udp_packets_total"); err != nil {
		t.Error(err)
	}
}
