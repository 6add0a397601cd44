package lease

import (
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/config"
)

// Golden values are what flanneld writes into etcd; weft must write the same
// bytes and read them back unchanged.
func TestAttrsGolden(t *testing.T) {
	v6 := netip.MustParseAddr("2001:db8::3")
	tests := []struct {
		file  string
		attrs Attrs
	}{
		{"vxlan.json", Attrs{PublicIP: netip.MustParseAddr("192.0.2.3"), BackendType: "vxlan",
			BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`)}},
		{"udp.json", Attrs{PublicIP: netip.MustParseAddr("192.0.2.7")}},
		{"hostgw.json", Attrs{PublicIP: netip.MustParseAddr("192.0.2.9"), BackendType: "host-gw"}},
		{"dualstack.json", Attrs{PublicIP: netip.MustParseAddr("192.0.2.3"), PublicIPv6: &v6, BackendType: "vxlan",
			BackendData:   json.RawMessage(`{"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}`),
			BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"8a:11:0c:5e:20:01"}`)}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			got, err := MarshalAttrs(tt.attrs)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want) {
				t.Errorf("marshal:\n got %s\nwant %s", got, want)
			}
			back, err := UnmarshalAttrs(want)
			if err != nil {
				t.Fatal(err)
			}
			if !back.Equal(tt.attrs) {
				t.Errorf("unmarshal: got %+v, want %+v", back, tt.attrs)
			}
		})
	}
}

func TestUnmarshalAttrsRejectsGarbage(t *testing.T) {
	for _, s := range []string{``, `{`, `"x"`, `{"PublicIP":"banana"}`, `{"PublicIP":"2001:db8::1"}`, `{"PublicIP":"192.0.2.1","PublicIPv6":"192.0.2.1"}`} {
		if _, err := UnmarshalAttrs([]byte(s)); err == nil {
			t.Errorf("UnmarshalAttrs(%q) succeeded", s)
		}
	}
}

func TestKeys(t *testing.T) {
	v4 := netip.MustParsePrefix("10.244.1.0/24")
	v6 := netip.MustParsePrefix("fd00:0:0:1::/64")
	tests := []struct {
		v4, v6 netip.Prefix
		key    string
	}{
		{v4, netip.Prefix{}, "10.244.1.0-24"},
		{v4, v6, "10.244.1.0-24&fd00:0:0:1::-64"},
		{v4, netip.MustParsePrefix("fd00:10:244:1::/64"), "10.244.1.0-24&fd00:10:244:1::-64"},
		{netip.MustParsePrefix("10.244.255.0/24"), netip.MustParsePrefix("2001:db8:0:ab00::/56"), "10.244.255.0-24&2001:db8:0:ab00::-56"},
		{netip.Prefix{}, v6, "fd00:0:0:1::-64"},
	}
	// flannel's ParseSubnetKey (pkg/subnet/subnet.go): a flannel node reads
	// dual-stack keys with it, and skips keys it does not match (so an
	// IPv6-only key is invisible to flannel rather than misread).
	flannelRE := regexp.MustCompile(`(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$`)
	for _, tt := range tests {
		m := flannelRE.FindStringSubmatch(tt.key)
		switch {
		case tt.v4.IsValid() && (m == nil || m[1] != tt.v4.Addr().String() || m[2] != strconv.Itoa(tt.v4.Bits())):
			t.Errorf("flannel would not read the IPv4 part of %q: %q", tt.key, m)
		case tt.v4.IsValid() && tt.v6.IsValid() && (m[3] != tt.v6.Addr().String() || m[4] != strconv.Itoa(tt.v6.Bits())):
			t.Errorf("flannel would not read the IPv6 part of %q: %q", tt.key, m)
		case !tt.v4.IsValid() && m != nil:
			t.Errorf("flannel would misread the IPv6-only key %q as %q", tt.key, m)
		}
		if got := Key(tt.v4, tt.v6); got != tt.key {
			t.Errorf("Key(%s, %s) = %q, want %q", tt.v4, tt.v6, got, tt.key)
		}
		g4, g6, err := ParseKey(tt.key)
		if err != nil || g4 != tt.v4 || g6 != tt.v6 {
			t.Errorf("ParseKey(%q) = %s, %s, %v", tt.key, g4, g6, err)
		}
	}
	for _, bad := range []string{"", "10.244.1.0", "10.244.1.0-33", "10.244.1.5-24", "10.244.1.0_24", "fd00::-64&10.244.1.0-24", "banana", "10.244.1.0-24fd00::-64", "10.244.1.0-24&"} {
		if a, b, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) = %s, %s; want error", bad, a, b)
		}
	}
}

func TestFirstIP(t *testing.T) {
	p := netip.MustParsePrefix("10.244.7.0/24")
	if FirstIP(p) != netip.MustParseAddr("10.244.7.1") || SubnetIP(p) != netip.MustParseAddr("10.244.7.0") {
		t.Errorf("FirstIP/SubnetIP of %s wrong", p)
	}
}

func mustNet(t *testing.T, js string) *config.Network {
	t.Helper()
	n, _, err := config.Parse([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPoolPickStaysInRange(t *testing.T) {
	n := mustNet(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.19.0","Backend":{"Type":"vxlan"}}`)
	pool := PoolV4(n)
	if pool.Size() != 10 {
		t.Fatalf("pool size %d, want 10", pool.Size())
	}
	r := rand.New(rand.NewPCG(1, 2))
	taken := map[netip.Prefix]bool{}
	for range 10 {
		s, err := pool.Pick(r, func(p netip.Prefix) bool { return taken[p] })
		if err != nil {
			t.Fatal(err)
		}
		if taken[s] || !pool.Contains(s) || s.Addr().Less(n.SubnetMin) || n.SubnetMax.Less(s.Addr()) {
			t.Fatalf("picked %s: taken or outside [%s, %s]", s, n.SubnetMin, n.SubnetMax)
		}
		taken[s] = true
	}
	if _, err := pool.Pick(r, func(p netip.Prefix) bool { return taken[p] }); err != ErrPoolExhausted {
		t.Fatalf("full pool: got %v, want ErrPoolExhausted", err)
	}
	for _, p := range []string{"10.244.9.0/24", "10.244.20.0/24", "10.244.10.0/25", "10.244.10.128/24"} {
		if pool.Contains(netip.MustParsePrefix(p)) {
			t.Errorf("pool should not contain %s", p)
		}
	}
}

func TestPoolV6(t *testing.T) {
	n := mustNet(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"vxlan"}}`)
	pool := PoolV6(n)
	if pool.Size() != 65535 {
		t.Fatalf("pool size %d, want 65535", pool.Size())
	}
	if got := pool.At(0); got != netip.MustParsePrefix("fd00:10:244:1::/64") {
		t.Errorf("first subnet %s", got)
	}
	s, err := pool.Pick(rand.New(rand.NewPCG(3, 4)), func(netip.Prefix) bool { return false })
	if err != nil || !pool.Contains(s) {
		t.Errorf("Pick = %s, %v", s, err)
	}
}

// An explicit IPv6 range bounds every pick, as SubnetMin/SubnetMax do for
// IPv4, and a full one says so.
func TestPoolV6PickStaysInRange(t *testing.T) {
	n := mustNet(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",`+
		`"IPv6SubnetMin":"fd00:10:244:a0::","IPv6SubnetMax":"fd00:10:244:a5::","Backend":{"Type":"vxlan"}}`)
	pool := PoolV6(n)
	if pool.Size() != 6 {
		t.Fatalf("pool size %d, want 6", pool.Size())
	}
	r := rand.New(rand.NewPCG(5, 6))
	taken := map[netip.Prefix]bool{}
	for range 6 {
		s, err := pool.Pick(r, func(p netip.Prefix) bool { return taken[p] })
		if err != nil {
			t.Fatal(err)
		}
		if taken[s] || !pool.Contains(s) || s.Bits() != 64 || s.Addr().Less(n.IPv6SubnetMin) || n.IPv6SubnetMax.Less(s.Addr()) {
			t.Fatalf("picked %s: taken or outside [%s, %s]", s, n.IPv6SubnetMin, n.IPv6SubnetMax)
		}
		taken[s] = true
	}
	if _, err := pool.Pick(r, func(p netip.Prefix) bool { return taken[p] }); err != ErrPoolExhausted {
		t.Fatalf("full IPv6 pool: got %v, want ErrPoolExhausted", err)
	}
	if strings.Contains(ErrPoolExhausted.Error(), "SubnetMin") {
		t.Errorf("ErrPoolExhausted %q names IPv4 keys; the store names the family's own", ErrPoolExhausted)
	}
	for _, p := range []string{"fd00:10:244:9f::/64", "fd00:10:244:a6::/64", "fd00:10:244:a0::/65", "fd00:10:244:a0::1/64", "10.244.160.0/24"} {
		if pool.Contains(netip.MustParsePrefix(p)) {
			t.Errorf("pool should not contain %s", p)
		}
	}
}

func TestSameNode(t *testing.T) {
	v6 := func(s string) *netip.Addr { a := netip.MustParseAddr(s); return &a }
	a := Attrs{PublicIP: netip.MustParseAddr("192.0.2.1")}
	tests := []struct {
		name string
		a, b Attrs
		want bool
	}{
		{"same IPv4", a, a, true},
		{"other IPv4", a, Attrs{PublicIP: netip.MustParseAddr("192.0.2.2")}, false},
		{"IPv4 decides over IPv6", Attrs{PublicIP: a.PublicIP, PublicIPv6: v6("2001:db8::1")}, Attrs{PublicIP: a.PublicIP, PublicIPv6: v6("2001:db8::2")}, true},
		{"IPv6-only same", Attrs{PublicIP: netip.IPv4Unspecified(), PublicIPv6: v6("2001:db8::1")}, Attrs{PublicIPv6: v6("2001:db8::1")}, true},
		{"IPv6-only other", Attrs{PublicIPv6: v6("2001:db8::1")}, Attrs{PublicIPv6: v6("2001:db8::2")}, false},
		{"no address names nobody", Attrs{}, Attrs{}, false},
	}
	for _, tt := range tests {
		if got := SameNode(tt.a, tt.b); got != tt.want {
			t.Errorf("%s: SameNode = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// A megabyte of garbage in the store is quoted, not copied, in errors.
func TestUnmarshalAttrsClipsValue(t *testing.T) {
	big := `{"PublicIP":"` + strings.Repeat("x", 1<<20) + `"}`
	_, err := UnmarshalAttrs([]byte(big))
	if err == nil || len(err.Error()) > 400 || !strings.Contains(err.Error(), "bytes") {
		t.Fatalf("error of %d bytes: %.300v", len(err.Error()), err)
	}
}

// A lease read again is unchanged only with the same publication and age:
// a key deleted and rewritten with the same value is a younger lease.
func TestUnchanged(t *testing.T) {
	l := Lease{Subnet: netip.MustParsePrefix("10.244.1.0/24"), Attrs: Attrs{PublicIP: netip.MustParseAddr("192.0.2.1"), BackendType: "vxlan"}, Created: 7}
	renewed := l
	renewed.Expiration = time.Now()
	recreated := l
	recreated.Created = 9
	moved := l
	moved.Attrs.PublicIP = netip.MustParseAddr("192.0.2.2")
	if !l.Unchanged(renewed) || l.Unchanged(recreated) || l.Unchanged(moved) {
		t.Errorf("Unchanged: renewed %v, recreated %v, moved %v; want true, false, false",
			l.Unchanged(renewed), l.Unchanged(recreated), l.Unchanged(moved))
	}
}
