package config

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestDefaults(t *testing.T) {
	tests := []struct {
		name     string
		json     string
		len      int
		min, max string
	}{
		{"slash16", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`, 24, "10.244.1.0", "10.244.255.0"},
		{"slash8", `{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}`, 24, "10.0.1.0", "10.255.255.0"},
		{"slash22", `{"Network":"10.1.0.0/22","Backend":{"Type":"vxlan"}}`, 24, "10.1.1.0", "10.1.3.0"},
		{"slash23 splits in four", `{"Network":"10.1.0.0/23","Backend":{"Type":"vxlan"}}`, 25, "10.1.0.128", "10.1.1.128"},
		{"slash28", `{"Network":"10.1.0.0/28","Backend":{"Type":"vxlan"}}`, 30, "10.1.0.4", "10.1.0.12"},
		{"explicit len", `{"Network":"10.0.0.0/8","SubnetLen":20,"Backend":{"Type":"vxlan"}}`, 20, "10.0.16.0", "10.255.240.0"},
		{"host bits masked", `{"Network":"10.244.3.7/16","Backend":{"Type":"vxlan"}}`, 24, "10.244.1.0", "10.244.255.0"},
		{"explicit range", `{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.20.0","Backend":{"Type":"vxlan"}}`, 24, "10.244.10.0", "10.244.20.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, _, err := Parse([]byte(tt.json))
			if err != nil {
				t.Fatal(err)
			}
			if n.SubnetLen != tt.len || n.SubnetMin != netip.MustParseAddr(tt.min) || n.SubnetMax != netip.MustParseAddr(tt.max) {
				t.Errorf("got len %d min %s max %s, want %d %s %s", n.SubnetLen, n.SubnetMin, n.SubnetMax, tt.len, tt.min, tt.max)
			}
		})
	}
}

func TestBackendDefaults(t *testing.T) {
	n, warnings, err := Parse([]byte(`{"Network":"10.244.0.0/16"}`))
	if err != nil {
		t.Fatal(err)
	}
	if n.Backend.Type != BackendUDP || n.Backend.Port != DefaultUDPPort {
		t.Errorf("absent Backend: got %+v, want udp on %d", n.Backend, DefaultUDPPort)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "udp") {
		t.Errorf("absent Backend should warn about the udp default, got %q", warnings)
	}

	n, _, err = Parse([]byte(`{"network":"10.244.0.0/16","backend":{"type":"VXLAN","directrouting":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Backend{Type: BackendVXLAN, VNI: 1, Port: 8472, DirectRouting: true}
	got := n.Backend
	got.Raw = nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("lower-case keys: got %+v, want %+v", n.Backend, want)
	}
	if !n.EnableIPv4 || n.EnableIPv6 {
		t.Errorf("EnableIPv4 should default to true, IPv6 to false")
	}
}

func TestUnknownKeysWarn(t *testing.T) {
	_, warnings, err := Parse([]byte(`{"Network":"10.244.0.0/16","Netwrok":"x","Backend":{"Type":"vxlan","VNl":2}}`))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(warnings, "; ")
	if !strings.Contains(got, `"Netwrok"`) || !strings.Contains(got, `"Backend.VNl"`) {
		t.Errorf("warnings %q should name both unknown keys", got)
	}
}

func TestIPv6(t *testing.T) {
	n, _, err := Parse([]byte(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if n.IPv6SubnetLen != 64 || n.IPv6SubnetMin != netip.MustParseAddr("fd00:10:244:1::") || n.IPv6SubnetMax != netip.MustParseAddr("fd00:10:244:ff::") {
		t.Errorf("got %d %s %s", n.IPv6SubnetLen, n.IPv6SubnetMin, n.IPv6SubnetMax)
	}
	// An explicit range is kept as given, and bounds the IPv6 family only.
	n, _, err = Parse([]byte(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","IPv6SubnetLen":62,` +
		`"IPv6SubnetMin":"fd00:10:244:10::","IPv6SubnetMax":"fd00:10:244:1c::","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if n.IPv6SubnetLen != 62 || n.IPv6SubnetMin != netip.MustParseAddr("fd00:10:244:10::") || n.IPv6SubnetMax != netip.MustParseAddr("fd00:10:244:1c::") {
		t.Errorf("explicit IPv6 range: got %d %s %s", n.IPv6SubnetLen, n.IPv6SubnetMin, n.IPv6SubnetMax)
	}
	if n.SubnetMin != netip.MustParseAddr("10.244.1.0") || n.SubnetMax != netip.MustParseAddr("10.244.255.0") {
		t.Errorf("explicit IPv6 range moved the IPv4 one: %s %s", n.SubnetMin, n.SubnetMax)
	}
	n, _, err = Parse([]byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if n.Network.IsValid() {
		t.Errorf("IPv6-only config should leave Network unset, got %s", n.Network)
	}
}

// Every bad input names the key and the value a user has to fix.
func TestErrors(t *testing.T) {
	tests := []struct {
		name, json string
		field      string
		contains   []string
	}{
		{"not json", `{"Network": "10.244.0.0/16",`, "", []string{"not valid JSON", "line 1"}},
		{"wrong type", `{"Network": "10.244.0.0/16", "SubnetLen": "24"}`, "", []string{"SubnetLen"}},
		{"network missing", `{"Backend":{"Type":"vxlan"}}`, "Network", []string{"Network", "missing"}},
		{"network not cidr", `{"Network":"10.244.0.0"}`, "Network", []string{`"10.244.0.0"`, "not a CIDR"}},
		{"network v6", `{"Network":"fd00::/48"}`, "Network", []string{"IPv4"}},
		{"subnetlen 31", `{"Network":"10.244.0.0/16","SubnetLen":31}`, "SubnetLen", []string{"SubnetLen 31", "at most 30"}},
		{"subnetlen too short", `{"Network":"10.244.0.0/16","SubnetLen":17}`, "SubnetLen", []string{"SubnetLen 17", "four subnets"}},
		{"network too small", `{"Network":"10.0.0.0/29"}`, "Network", []string{"too small"}},
		{"min outside", `{"Network":"10.244.0.0/16","SubnetMin":"10.245.1.0"}`, "SubnetMin", []string{`SubnetMin "10.245.1.0"`, "outside Network 10.244.0.0/16"}},
		{"max outside", `{"Network":"10.244.0.0/16","SubnetMax":"192.0.2.0"}`, "SubnetMax", []string{`SubnetMax "192.0.2.0"`, "outside"}},
		{"min unaligned", `{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.5"}`, "SubnetMin", []string{"not on a /24 boundary (SubnetLen)"}},
		{"min not ip", `{"Network":"10.244.0.0/16","SubnetMin":"ten"}`, "SubnetMin", []string{"not an IP"}},
		{"max below min", `{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.3.0"}`, "SubnetMax", []string{"below"}},
		{"unknown backend", `{"Network":"10.244.0.0/16","Backend":{"Type":"ipip"}}`, "Backend.Type", []string{`"ipip"`, "vxlan"}},
		{"vni range", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}`, "Backend.VNI", []string{"16777216"}},
		{"port range", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":70000}}`, "Backend.Port", []string{"70000"}},
		{"mtu small", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":100}}`, "Backend.MTU", []string{"100"}},
		{"no family", `{"EnableIPv4":false}`, "EnableIPv4", []string{"EnableIPv6"}},
		{"ipv6 missing", `{"Network":"10.244.0.0/16","EnableIPv6":true}`, "IPv6Network", []string{"IPv6Network", "missing", "EnableIPv6"}},
		{"ipv6 missing v6-only", `{"EnableIPv4":false,"EnableIPv6":true,"Backend":{"Type":"vxlan"}}`, "IPv6Network", []string{"IPv6Network", "missing"}},
		{"ipv6 not v6", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"10.245.0.0/16"}`, "IPv6Network", []string{`"10.245.0.0/16"`, "IPv6"}},
		{"ipv6 subnetlen no room", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/64","IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}`, "IPv6SubnetLen", []string{"IPv6SubnetLen 64", "IPv6Network fd00::/64", "four subnets"}},
		{"ipv6 subnetlen 127", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":127,"Backend":{"Type":"vxlan"}}`, "IPv6SubnetLen", []string{"IPv6SubnetLen 127", "at most 126"}},
		{"ipv6 network too small", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/125","Backend":{"Type":"vxlan"}}`, "IPv6Network", []string{"fd00::/125", "too small"}},
		{"ipv6 max below min", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd00:0:0:9::","IPv6SubnetMax":"fd00:0:0:3::","Backend":{"Type":"vxlan"}}`, "IPv6SubnetMax", []string{`IPv6SubnetMax "fd00:0:0:3::"`, "below IPv6SubnetMin fd00:0:0:9::"}},
		{"ipv6 min unaligned", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd00:0:0:1::5","Backend":{"Type":"vxlan"}}`, "IPv6SubnetMin", []string{`IPv6SubnetMin "fd00:0:0:1::5"`, "not on a /64 boundary (IPv6SubnetLen)"}},
		{"ipv6 max unaligned", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":60,"IPv6SubnetMax":"fd00:0:0:f1::","Backend":{"Type":"vxlan"}}`, "IPv6SubnetMax", []string{`IPv6SubnetMax "fd00:0:0:f1::"`, "/60 boundary (IPv6SubnetLen)"}},
		{"ipv6 subnetlen short names the key", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":57,"Backend":{"Type":"vxlan"}}`, "IPv6SubnetLen", []string{"IPv6SubnetLen 57", "so IPv6SubnetLen must be at least 58"}},
		{"ipv6 min outside", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd01::","Backend":{"Type":"vxlan"}}`, "IPv6SubnetMin", []string{`IPv6SubnetMin "fd01::"`, "outside IPv6Network fd00::/56"}},
		{"both families off", `{"Network":"10.244.0.0/16","EnableIPv4":false,"EnableIPv6":false}`, "EnableIPv4", []string{"EnableIPv4 false", "EnableIPv6"}},
		{"udp with ipv6", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{"Type":"udp"}}`, "EnableIPv6", []string{"EnableIPv6 true", "Backend.Type", "udp"}},
		{"default udp with ipv6", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56"}`, "EnableIPv6", []string{"EnableIPv6", "udp"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Parse([]byte(tt.json))
			if err == nil {
				t.Fatal("want an error")
			}
			for _, s := range tt.contains {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q should contain %q", err, s)
				}
			}
			var fe *FieldError
			if tt.field != "" && (!errors.As(err, &fe) || fe.Field != tt.field) {
				t.Errorf("error %q should be a FieldError on %s", err, tt.field)
			}
		})
	}
}

// FuzzParse: any input either fails cleanly or yields a config whose
// invariants hold.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`,
		`{"Network":"10.0.0.0/28","SubnetLen":30}`,
		`{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.20.0"}`,
		`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56"}`,
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/120","IPv6SubnetLen":126}`,
		`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":60,"IPv6SubnetMin":"fd00:0:0:10::","IPv6SubnetMax":"fd00:0:0:f0::","Backend":{"Type":"vxlan"}}`,
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/120","IPv6SubnetLen":126,"Backend":{"Type":"host-gw"}}`,
		`[]`, `null`, `{"Backend":null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		n, _, err := Parse(data)
		if err != nil {
			if n != nil {
				t.Fatal("config returned with an error")
			}
			return
		}
		if n.EnableIPv4 {
			if !n.Network.Contains(n.SubnetMin) || !n.Network.Contains(n.SubnetMax) || n.SubnetMax.Less(n.SubnetMin) {
				t.Fatalf("range [%s, %s] not inside %s", n.SubnetMin, n.SubnetMax, n.Network)
			}
			if n.SubnetLen > 30 || n.SubnetLen < n.Network.Bits()+2 {
				t.Fatalf("SubnetLen %d invalid for %s", n.SubnetLen, n.Network)
			}
			if netip.PrefixFrom(n.SubnetMin, n.SubnetLen).Masked().Addr() != n.SubnetMin ||
				netip.PrefixFrom(n.SubnetMax, n.SubnetLen).Masked().Addr() != n.SubnetMax {
				t.Fatalf("SubnetMin %s or SubnetMax %s not aligned to /%d", n.SubnetMin, n.SubnetMax, n.SubnetLen)
			}
		} else if n.Network.IsValid() {
			t.Fatalf("IPv4 off but Network %s set", n.Network)
		}
		if n.EnableIPv6 {
			if !n.IPv6Network.Addr().Is6() || n.IPv6Network.Addr().Is4In6() || n.IPv6Network.Masked() != n.IPv6Network {
				t.Fatalf("IPv6Network %s is not a masked IPv6 prefix", n.IPv6Network)
			}
			if !n.IPv6Network.Contains(n.IPv6SubnetMin) || !n.IPv6Network.Contains(n.IPv6SubnetMax) || n.IPv6SubnetMax.Less(n.IPv6SubnetMin) {
				t.Fatalf("IPv6 range [%s, %s] not inside %s", n.IPv6SubnetMin, n.IPv6SubnetMax, n.IPv6Network)
			}
			if n.IPv6SubnetLen > 126 || n.IPv6SubnetLen < n.IPv6Network.Bits()+2 {
				t.Fatalf("IPv6SubnetLen %d invalid for %s", n.IPv6SubnetLen, n.IPv6Network)
			}
			if netip.PrefixFrom(n.IPv6SubnetMin, n.IPv6SubnetLen).Masked().Addr() != n.IPv6SubnetMin ||
				netip.PrefixFrom(n.IPv6SubnetMax, n.IPv6SubnetLen).Masked().Addr() != n.IPv6SubnetMax {
				t.Fatalf("IPv6SubnetMin %s or IPv6SubnetMax %s not aligned to /%d", n.IPv6SubnetMin, n.IPv6SubnetMax, n.IPv6SubnetLen)
			}
			if n.Backend.Type == BackendUDP {
				t.Fatal("EnableIPv6 accepted with the udp backend")
			}
		} else if n.IPv6Network.IsValid() {
			t.Fatalf("IPv6 off but IPv6Network %s set", n.IPv6Network)
		}
		if !n.EnableIPv4 && !n.EnableIPv6 {
			t.Fatal("both families off accepted")
		}
		switch n.Backend.Type {
		case BackendVXLAN, BackendHostGW, BackendUDP:
		default:
			t.Fatalf("backend type %q accepted", n.Backend.Type)
		}
	})
}
