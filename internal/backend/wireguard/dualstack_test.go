package wireguard

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netif"
)

var (
	net4 = netip.MustParsePrefix("10.244.0.0/16")
	net6 = netip.MustParsePrefix("fd00:10:244::/56")
)

// dualLease is a dual-stack wireguard lease as flannel publishes it: one
// key in both blobs, ListenPort and ListenPortV6.
func dualLease(i int, pub4, pub6 string, k wgtypes.Key, port, port6 int) lease.Lease {
	data, _ := json.Marshal(map[string]any{"PublicKey": k.String(), "Port": port})
	data6, _ := json.Marshal(map[string]any{"PublicKey": k.String(), "Port": port6})
	v6 := netip.MustParseAddr(pub6)
	return lease.Lease{
		Subnet:     netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24),
		IPv6Subnet: netip.MustParsePrefix("fd00:10:244:" + string(rune('0'+i)) + "::/64"),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(pub4), PublicIPv6: &v6, BackendType: config.BackendWireGuard,
			BackendData: data, BackendV6Data: data6},
	}
}

// v6Only is l as an IPv6-only network has it: no IPv4 subnet, PublicIP
// 0.0.0.0, no BackendData.
func v6Only(l lease.Lease) lease.Lease {
	l.Subnet = netip.Prefix{}
	l.Attrs.PublicIP = netip.IPv4Unspecified()
	l.Attrs.BackendData = nil
	return l
}

func pfxs(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

// The leases flanneld v0.28.9 writes for a dual-stack and an IPv6-only
// wireguard node (newSubnetAttrs: BackendData only with IPv4, BackendV6Data
// with IPv6, one key, each family's listen port); weft writes the same.
func TestLeaseGoldenIPv6(t *testing.T) {
	for _, tt := range []struct {
		file string
		v4   bool
	}{{"lease-dual.json", true}, {"lease-ipv6.json", false}} {
		want, err := os.ReadFile(filepath.Join("testdata", tt.file))
		if err != nil {
			t.Fatal(err)
		}
		nw := &config.Network{EnableIPv4: tt.v4, EnableIPv6: true, IPv6Network: net6,
			Backend: config.Backend{Type: config.BackendWireGuard, ListenPort: 51820, ListenPortV6: 51821}}
		if tt.v4 {
			nw.Network = net4
		}
		b, err := New(backend.Params{Network: nw, Ext: netif.External{Name: "eth0", MTU: 1500}}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{})
		if err != nil {
			t.Fatal(err)
		}
		priv, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		// The golden file's key is pubA; this backend's is its own.
		pub := priv.PublicKey().String()
		want = []byte(strings.ReplaceAll(string(want), pubA, pub))
		b.key = priv
		a := lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.3"), BackendType: config.BackendWireGuard, BackendV6Data: b.LeaseV6Data()}
		if tt.v4 {
			a.BackendData, _ = LeaseData{PublicKey: pub, Port: 51820}.Marshal()
		} else {
			a.PublicIP = netip.Addr{}
		}
		v6 := netip.MustParseAddr("2001:db8::3")
		a.PublicIPv6 = &v6
		got, err := lease.MarshalAttrs(a)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != strings.TrimSpace(string(want)) {
			t.Errorf("%s:\ngot  %s\nwant %s", tt.file, got, want)
		}
		read, err := lease.UnmarshalAttrs(want)
		if err != nil {
			t.Fatal(err)
		}
		if k, port, err := ParseLeaseData(read.BackendV6Data); err != nil || k.String() != pub || port != 51821 {
			t.Errorf("%s: BackendV6Data read back as %v %d %v", tt.file, k, port, err)
		}
	}
}

func TestDevices(t *testing.T) {
	for _, tt := range []struct {
		mode   string
		v4, v6 bool
		want   []Device
	}{
		{"", true, false, []Device{{DeviceName, 51820, true, false}}},
		{"separate", true, true, []Device{{DeviceName, 51820, true, false}, {DeviceNameV6, 51821, false, true}}},
		{"separate", false, true, []Device{{DeviceNameV6, 51821, false, true}}},
		{"auto", true, true, []Device{{DeviceName, 51820, true, true}}},
		{"ipv4", true, true, []Device{{DeviceName, 51820, true, true}}},
		{"ipv6", false, true, []Device{{DeviceName, 51820, false, true}}},
	} {
		n := &config.Network{EnableIPv4: tt.v4, EnableIPv6: tt.v6, Backend: config.Backend{Mode: tt.mode}}
		if tt.v4 {
			n.Network = net4
		}
		if tt.v6 {
			n.IPv6Network = net6
		}
		if got := Devices(n); !slices.Equal(got, tt.want) {
			t.Errorf("mode %q v4 %v v6 %v: %+v, want %+v", tt.mode, tt.v4, tt.v6, got, tt.want)
		}
		if got, want := DeviceFor(n, true), ""; tt.v6 {
			want = tt.want[len(tt.want)-1].Name
			if got != want {
				t.Errorf("mode %q: IPv6 device %q, want %q", tt.mode, got, want)
			}
		}
	}
}

func TestSettingsIPv6(t *testing.T) {
	parse := func(conf string) *config.Network {
		t.Helper()
		n, _, err := config.Parse([]byte(conf))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	ext := netif.External{Name: "eth0", MTU: 1500}
	s, err := deriveSettings(backend.Params{Network: parse(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"wireguard"}}`), Ext: ext})
	if err != nil || s.mtu != 1420 || s.port != 51820 || s.port6 != 51821 || len(s.devices) != 2 || s.portQuirk() != "" {
		t.Errorf("dual separate: %+v %v", s, err)
	}
	// Mode ipv6 is accepted now; one device on ListenPort, and the
	// warning that peers dialled over IPv6 use ListenPortV6.
	s, err = deriveSettings(backend.Params{Network: parse(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"wireguard","Mode":"ipv6"}}`), Ext: ext})
	if err != nil || len(s.devices) != 1 || !strings.Contains(s.portQuirk(), "set ListenPortV6 to 51820") {
		t.Errorf("mode ipv6: %+v %v, quirk %q", s, err, s.portQuirk())
	}
	s, err = deriveSettings(backend.Params{Network: parse(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"wireguard","Mode":"ipv6","ListenPortV6":51820}}`), Ext: ext})
	if err != nil || s.portQuirk() != "" {
		t.Errorf("mode ipv6 with one port: %v, quirk %q", err, s.portQuirk())
	}
	for conf, want := range map[string]string{
		`{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","Mode":"ipv6"}}`:                                      `"ipv6"`,
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{"Type":"wireguard","Mode":"ipv4"}}`: `"ipv4"`,
	} {
		if _, err := deriveSettings(backend.Params{Network: parse(conf), Ext: ext}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error naming Mode %s", conf, err, want)
		}
	}
}

// separate mode: flannel-wg's peers are the leases' IPv4 halves,
// flannel-wg-v6's their IPv6 halves, dialled at [PublicIPv6]:<the
// BackendV6Data Port> (the device's own when 0).
func TestDesiredSeparate(t *testing.T) {
	own, k2, k3, k4 := key(t), key(t), key(t), key(t)
	leases := []lease.Lease{
		dualLease(1, "192.0.2.1", "2001:db8::1", own, 51820, 51821),
		dualLease(2, "192.0.2.2", "2001:db8::2", k2, 51820, 51821),
		dualLease(3, "192.0.2.3", "2001:db8::3", k3, 4000, 0), // flannel before Port in the v6 blob
		dualLease(4, "192.0.2.4", "2001:db8::4", k4, 51820, 51821),
	}
	leases[3].Attrs.BackendV6Data = nil // an old node without BackendV6Data: IPv4 only
	p := Params{Mode: config.WireGuardSeparate, Network: net4, Network6: net6,
		Own: leases[0].Subnet, Own6: leases[0].IPv6Subnet, OwnKey: own,
		PublicIP: netip.MustParseAddr("192.0.2.1"), PublicIPv6: netip.MustParseAddr("2001:db8::1")}

	p.Device = Device{Name: DeviceName, Port: 51820, IPv4: true}
	peers, skipped := Desired(p, leases)
	wantPeers(t, "flannel-wg", peers, skipped, []Peer{
		{PublicKey: k2, Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), AllowedIPs: pfxs("10.244.2.0/24")},
		{PublicKey: k3, Endpoint: netip.MustParseAddrPort("192.0.2.3:4000"), AllowedIPs: pfxs("10.244.3.0/24")},
		{PublicKey: k4, Endpoint: netip.MustParseAddrPort("192.0.2.4:51820"), AllowedIPs: pfxs("10.244.4.0/24")},
	}, nil)

	p.Device = Device{Name: DeviceNameV6, Port: 51821, IPv6: true}
	peers, skipped = Desired(p, leases)
	wantPeers(t, "flannel-wg-v6", peers, skipped, []Peer{
		{PublicKey: k2, Endpoint: netip.MustParseAddrPort("[2001:db8::2]:51821"), AllowedIPs: pfxs("fd00:10:244:2::/64")},
		{PublicKey: k3, Endpoint: netip.MustParseAddrPort("[2001:db8::3]:51821"), AllowedIPs: pfxs("fd00:10:244:3::/64")},
	}, []string{"fd00:10:244:4::/64"})
	if !strings.Contains(skipped[0].Error(), "BackendV6Data") {
		t.Errorf("skipped for %v, want the missing BackendV6Data named", skipped[0])
	}

	// IPv6 only: the own lease is told by its IPv6 subnet (an IPv4 one
	// is invalid on every lease).
	v6leases := []lease.Lease{v6Only(leases[0]), v6Only(leases[1])}
	p.Network, p.Own, p.PublicIP = netip.Prefix{}, netip.Prefix{}, netip.Addr{}
	peers, skipped = Desired(p, v6leases)
	wantPeers(t, "IPv6 only", peers, skipped, []Peer{
		{PublicKey: k2, Endpoint: netip.MustParseAddrPort("[2001:db8::2]:51821"), AllowedIPs: pfxs("fd00:10:244:2::/64")},
	}, nil)

	// Bad IPv6 halves: outside the IPv6 network, no PublicIPv6, ours.
	bad := []lease.Lease{dualLease(5, "192.0.2.5", "2001:db8::5", key(t), 51820, 51821), dualLease(6, "192.0.2.6", "2001:db8::6", key(t), 51820, 51821),
		dualLease(7, "192.0.2.7", "2001:db8::1", key(t), 51820, 51821)}
	bad[0].IPv6Subnet = netip.MustParsePrefix("fd99::/64")
	bad[1].Attrs.PublicIPv6 = nil
	peers, skipped = Desired(p, bad)
	wantPeers(t, "bad IPv6", peers, skipped, nil, []string{"fd99::/64", "fd00:10:244:6::/64", "fd00:10:244:7::/64"})
}

// The single-device modes: flannel-wg carries both subnets of each
// lease; ipv4 dials PublicIP:Port, ipv6 [PublicIPv6]:<BackendV6Data's
// Port> (ListenPortV6, flannel's quirk), auto chooses per peer.
func TestDesiredSingleDevice(t *testing.T) {
	own, k2 := key(t), key(t)
	self := dualLease(1, "192.0.2.1", "2001:db8::1", own, 51820, 51821)
	peer := dualLease(2, "192.0.2.2", "2001:db8::2", k2, 51820, 51821)
	both := pfxs("10.244.2.0/24", "fd00:10:244:2::/64")
	base := Params{Device: Device{Name: DeviceName, Port: 51820, IPv4: true, IPv6: true}, Network: net4, Network6: net6,
		Own: self.Subnet, Own6: self.IPv6Subnet, OwnKey: own,
		PublicIP: netip.MustParseAddr("192.0.2.1"), PublicIPv6: netip.MustParseAddr("2001:db8::1")}
	withIPs := func(l lease.Lease, pub4, pub6 string) lease.Lease {
		l.Attrs.PublicIP = netip.MustParseAddr(pub4)
		if pub6 == "" {
			l.Attrs.PublicIPv6 = nil
		} else {
			v6 := netip.MustParseAddr(pub6)
			l.Attrs.PublicIPv6 = &v6
		}
		return l
	}
	for _, tt := range []struct {
		name       string
		mode       string
		own4, own6 string // this node's public addresses
		peer       lease.Lease
		want       string // endpoint
	}{
		{"ipv4", config.WireGuardIPv4, "192.0.2.1", "2001:db8::1", peer, "192.0.2.2:51820"},
		{"ipv6 dials ListenPortV6", config.WireGuardIPv6, "192.0.2.1", "2001:db8::1", peer, "[2001:db8::2]:51821"},
		{"auto: a public IPv4 peer over IPv4", config.WireGuardAuto, "192.0.2.1", "2001:db8::1", peer, "192.0.2.2:51820"},
		{"auto: a private IPv4 peer, public IPv6 both ends: IPv6", config.WireGuardAuto, "10.0.0.1", "2001:db8::1",
			withIPs(peer, "10.0.0.2", "2001:db8::2"), "[2001:db8::2]:51821"},
		{"auto: 172.16/12 and 192.168/16 are private too", config.WireGuardAuto, "172.16.0.1", "2001:db8::1",
			withIPs(peer, "192.168.0.2", "2001:db8::2"), "[2001:db8::2]:51821"},
		{"auto: a private IPv6 peer: IPv4", config.WireGuardAuto, "10.0.0.1", "2001:db8::1",
			withIPs(peer, "10.0.0.2", "fd00::2"), "10.0.0.2:51820"},
		{"auto: this node's IPv6 private: IPv4", config.WireGuardAuto, "10.0.0.1", "fd00::1",
			withIPs(peer, "10.0.0.2", "2001:db8::2"), "10.0.0.2:51820"},
		{"auto: flannel's private test on the first non-zero byte", config.WireGuardAuto, "10.0.0.1", "2001:db8::1",
			withIPs(peer, "10.0.0.2", "::fd00:2"), "10.0.0.2:51820"},
		{"auto: a peer without IPv6: IPv4", config.WireGuardAuto, "10.0.0.1", "2001:db8::1",
			withIPs(peer, "10.0.0.2", ""), "10.0.0.2:51820"},
	} {
		p := base
		p.Mode, p.PublicIP, p.PublicIPv6 = tt.mode, netip.MustParseAddr(tt.own4), netip.MustParseAddr(tt.own6)
		// A peer without PublicIPv6 keeps its IPv6 subnet: AllowedIPs both.
		peers, skipped := Desired(p, []lease.Lease{self, tt.peer})
		wantPeers(t, tt.name, peers, skipped, []Peer{{PublicKey: k2, Endpoint: netip.MustParseAddrPort(tt.want), AllowedIPs: both}}, nil)
	}

	// IPv6 only, auto: flannel's rule says IPv4 for a private IPv6 peer
	// (and would dial 0.0.0.0); weft dials the family it has.
	p := base
	p.Mode, p.Device.IPv4, p.Network, p.Own, p.PublicIP, p.PublicIPv6 = config.WireGuardAuto, false, netip.Prefix{}, netip.Prefix{}, netip.Addr{}, netip.MustParseAddr("fd00::1")
	v6peer := v6Only(withIPs(peer, "0.0.0.0", "fd00::2"))
	peers, skipped := Desired(p, []lease.Lease{v6Only(self), v6peer})
	wantPeers(t, "IPv6 only, auto", peers, skipped, []Peer{{PublicKey: k2, Endpoint: netip.MustParseAddrPort("[fd00::2]:51821"), AllowedIPs: pfxs("fd00:10:244:2::/64")}}, nil)

	// Mode ipv6 and a peer with no PublicIPv6: not reachable; mode ipv4
	// and an IPv4-only peer in a dual network: its IPv4 subnet only.
	p = base
	p.Mode = config.WireGuardIPv6
	peers, skipped = Desired(p, []lease.Lease{withIPs(peer, "192.0.2.2", "")})
	wantPeers(t, "ipv6 without PublicIPv6", peers, skipped, nil, []string{"10.244.2.0/24"})
	p.Mode = config.WireGuardIPv4
	v4peer := peer
	v4peer.IPv6Subnet, v4peer.Attrs.BackendV6Data, v4peer.Attrs.PublicIPv6 = netip.Prefix{}, nil, nil
	peers, skipped = Desired(p, []lease.Lease{v4peer})
	wantPeers(t, "IPv4-only peer", peers, skipped, []Peer{{PublicKey: k2, Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), AllowedIPs: pfxs("10.244.2.0/24")}}, nil)
}

// wantPeers compares a plan with the peers and skipped subnets wanted.
func wantPeers(t *testing.T, name string, got []Peer, skipped []*backend.LeaseError, want []Peer, wantSkipped []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: peers %+v, want %+v (skipped %v)", name, got, want, skipped)
		return
	}
	byKey := map[wgtypes.Key]Peer{}
	for _, p := range want {
		byKey[p.PublicKey] = p
	}
	for _, p := range got {
		if !p.Equal(byKey[p.PublicKey]) {
			t.Errorf("%s: peer %+v, want %+v", name, p, byKey[p.PublicKey])
		}
	}
	var gotSkipped []string
	for _, s := range skipped {
		gotSkipped = append(gotSkipped, s.Subnet.String())
	}
	if !slices.Equal(gotSkipped, wantSkipped) {
		t.Errorf("%s: skipped %v, want %v", name, skipped, wantSkipped)
	}
}

// A dual-stack lease names its key once; an IPv6-only lease by its IPv6
// blob.
func TestIdentitiesDual(t *testing.T) {
	k := key(t)
	l := dualLease(2, "192.0.2.2", "2001:db8::2", k, 51820, 51821)
	if got := Identities(l); !slices.Equal(got, []string{"WireGuard key " + k.String()}) {
		t.Errorf("dual: %v", got)
	}
	if got := Identities(v6Only(l)); !slices.Equal(got, []string{"WireGuard key " + k.String()}) {
		t.Errorf("IPv6 only: %v", got)
	}
}

// Each device is its own series: flannel-wg-v6's peers and drops are
// not folded into flannel-wg's.
func TestCollectorPerDevice(t *testing.T) {
	c := newCollector(func() Stats {
		return Stats{Implementation: ImplUserspace, Devices: []DeviceStats{
			{Name: DeviceName, Peers: 2, Dropped: map[string]uint64{"invalid_handshake": 1}},
			{Name: DeviceNameV6, Peers: 3, TxBytes: 7, Dropped: map[string]uint64{"invalid_handshake": 4}},
		}}
	})
	want := `
# HELP weft_wireguard_dropped_total Packets the WireGuard device dropped, by reason.
# TYPE weft_wireguard_dropped_total counter
weft_wireguard_dropped_total{device="flannel-wg",reason="invalid_handshake"} 1
weft_wireguard_dropped_total{device="flannel-wg-v6",reason="invalid_handshake"} 4
# HELP weft_wireguard_peers Peers configured on the WireGuard device.
# TYPE weft_wireguard_peers gauge
weft_wireguard_peers{device="flannel-wg"} 2
weft_wireguard_peers{device="flannel-wg-v6"} 3
# HELP weft_wireguard_device_info The WireGuard devices weftd runs: the kernel's or wireguard-go in weftd (userspace).
# TYPE weft_wireguard_device_info gauge
weft_wireguard_device_info{device="flannel-wg",implementation="userspace"} 1
weft_wireguard_device_info{device="flannel-wg-v6",implementation="userspace"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "weft_wireguard_dropped_total", "weft_wireguard_peers", "weft_wireguard_device_info"); err != nil {
		t.Error(err)
	}
}
