package udp

import (
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/netif"
)

func TestDeriveSettings(t *testing.T) {
	parse := func(js string) *config.Network {
		n, _, err := config.Parse([]byte(js))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	ext := netif.External{Name: "eth0", MTU: 1500}
	for _, tc := range []struct {
		name     string
		p        backend.Params
		port     uint16
		mtu      int
		errorHas string
	}{
		{"defaults", backend.Params{Network: parse(`{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`), Ext: ext}, 8285, 1472, ""},
		{"no backend type means udp", backend.Params{Network: parse(`{"Network":"10.244.0.0/16"}`), Ext: ext}, 8285, 1472, ""},
		{"port and MTU set", backend.Params{Network: parse(`{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":9000,"MTU":1400}}`), Ext: ext}, 9000, 1400, ""},
		{"jumbo underlay", backend.Params{Network: parse(`{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`), Ext: netif.External{Name: "eth0", MTU: 9000}}, 8285, 8972, ""},
		{"unknown underlay MTU", backend.Params{Network: parse(`{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`), Ext: netif.External{Name: "eth0"}}, 0, 0, "MTU of eth0 unknown"},
		{"tiny underlay", backend.Params{Network: parse(`{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`), Ext: netif.External{Name: "eth0", MTU: 600}}, 0, 0, "below 576"},
		// config.Parse refuses udp with IPv6; the backend still checks for
		// itself, for a Network built some other way.
		{"IPv6 only", backend.Params{Network: &config.Network{EnableIPv6: true, Backend: config.Backend{Type: config.BackendUDP, Port: 8285}}, Ext: ext}, 0, 0, "IPv4 only"},
		{"no config", backend.Params{Ext: ext}, 0, 0, "no network config"},
	} {
		s, err := deriveSettings(tc.p)
		if tc.errorHas != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errorHas) {
				t.Errorf("%s: err %v, want one with %q", tc.name, err, tc.errorHas)
			}
			continue
		}
		if err != nil || s.port != tc.port || s.mtu != tc.mtu {
			t.Errorf("%s: %+v, %v; want port %d mtu %d", tc.name, s, err, tc.port, tc.mtu)
		}
	}
}
