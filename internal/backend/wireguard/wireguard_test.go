package wireguard

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netif"
)

const pubA = "7iHyHAvILRNltQxSOt9+7A+59yXCiefOHZB5/iUNQTY="

// The lease flanneld v0.28.9 writes for a wireguard node; weft writes the
// same bytes.
func TestLeaseGolden(t *testing.T) {
	want, err := os.ReadFile(filepath.Join("testdata", "lease.json"))
	if err != nil {
		t.Fatal(err)
	}
	data, err := LeaseData{PublicKey: pubA, Port: 51820}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := lease.MarshalAttrs(lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.3"), BackendType: "wireguard", BackendData: data})
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != strings.TrimSpace(string(want)) {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	a, err := lease.UnmarshalAttrs(want)
	if err != nil {
		t.Fatal(err)
	}
	k, port, err := ParseLeaseData(a.BackendData)
	if err != nil || k.String() != pubA || port != 51820 {
		t.Errorf("read back: %v %d %v", k, port, err)
	}
}

func TestKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "flannel", "wgkey")
	k, created, err := LoadKey(path)
	if err != nil || !created {
		t.Fatalf("first load: %v created %v", err, created)
	}
	info, err := os.Stat(path)
	if err != nil || info.Mode().Perm() != 0o400 {
		t.Fatalf("key file mode %v (%v), want 0400", info.Mode(), err)
	}
	raw, _ := os.ReadFile(path)
	if strings.HasSuffix(string(raw), "\n") || len(raw) != 44 {
		t.Errorf("key file %q: want 44 base64 characters, no newline", raw)
	}
	again, created, err := LoadKey(path)
	if err != nil || created || again != k {
		t.Fatalf("second load: %v created %v same %v", err, created, again == k)
	}
	// flannel tolerates a newline (a file written by hand).
	nl := filepath.Join(t.TempDir(), "wgkey")
	if err := os.WriteFile(nl, append(raw, '\n'), 0o400); err != nil {
		t.Fatal(err)
	}
	if k2, _, err := LoadKey(nl); err != nil || k2 != k {
		t.Errorf("key with a newline: %v", err)
	}
}

func TestKeyFileGarbageIsAnErrorAndKept(t *testing.T) {
	for _, content := range []string{"", "not a key", "c2hvcnQ="} {
		path := filepath.Join(t.TempDir(), "wgkey")
		if err := os.WriteFile(path, []byte(content), 0o400); err != nil {
			t.Fatal(err)
		}
		_, _, err := LoadKey(path)
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%q: got %v, want an error naming %s", content, err, path)
		}
		if after, _ := os.ReadFile(path); string(after) != content {
			t.Errorf("%q: the file was changed to %q", content, after)
		}
	}
}

func key(t *testing.T) wgtypes.Key {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

func wgLease(subnet, pub string, k wgtypes.Key, port int) lease.Lease {
	data, _ := json.Marshal(map[string]any{"PublicKey": k.String(), "Port": port})
	return lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{
		PublicIP: netip.MustParseAddr(pub), BackendType: config.BackendWireGuard, BackendData: data}}
}

func TestDesired(t *testing.T) {
	own, k2, k3, k4 := key(t), key(t), key(t), key(t)
	p := Params{Mode: config.WireGuardSeparate, Device: Device{Name: DeviceName, Port: 51820, IPv4: true},
		Network: netip.MustParsePrefix("10.244.0.0/16"), Own: netip.MustParsePrefix("10.244.1.0/24"),
		OwnKey: own, PublicIP: netip.MustParseAddr("192.0.2.1")}
	vx := wgLease("10.244.9.0/24", "192.0.2.9", k4, 0)
	vx.Attrs.BackendType = "vxlan"
	leases := []lease.Lease{
		wgLease("10.244.1.0/24", "192.0.2.1", own, 51820), // ourselves
		wgLease("10.244.3.0/24", "192.0.2.3", k3, 0),      // flannel before Port: our port
		wgLease("10.244.2.0/24", "192.0.2.2", k2, 4000),
		wgLease("10.244.4.0/24", "192.0.2.4", k2, 51820),  // k2 again
		wgLease("10.244.5.0/24", "192.0.2.5", own, 51820), // our key elsewhere
		wgLease("10.9.0.0/24", "192.0.2.6", k4, 51820),    // outside the network
		vx,
		{Subnet: netip.MustParsePrefix("10.244.7.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.7"), BackendType: "wireguard", BackendData: json.RawMessage(`{"PublicKey":"x"}`)}},
	}
	peers, skipped := Desired(p, leases)
	want := map[wgtypes.Key]Peer{
		k2: {PublicKey: k2, Endpoint: netip.MustParseAddrPort("192.0.2.2:4000"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}},
		k3: {PublicKey: k3, Endpoint: netip.MustParseAddrPort("192.0.2.3:51820"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}},
	}
	if len(peers) != len(want) {
		t.Fatalf("peers %+v", peers)
	}
	for _, pe := range peers {
		if !pe.Equal(want[pe.PublicKey]) {
			t.Errorf("peer %+v, want %+v", pe, want[pe.PublicKey])
		}
	}
	got := map[string]bool{}
	for _, s := range skipped {
		got[s.Subnet.String()] = true
	}
	for _, sn := range []string{"10.244.4.0/24", "10.244.5.0/24", "10.9.0.0/24", "10.244.9.0/24", "10.244.7.0/24"} {
		if !got[sn] {
			t.Errorf("lease %s not reported skipped (%v)", sn, skipped)
		}
	}
	if len(skipped) != 5 {
		t.Errorf("skipped %v", skipped)
	}
}

func TestChange(t *testing.T) {
	k1, k2, k3 := key(t), key(t), key(t)
	ka := 25 * time.Second
	desired := []Peer{
		{PublicKey: k1, Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}},
		{PublicKey: k2, Endpoint: netip.MustParseAddrPort("192.0.2.3:51820"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}},
	}
	// k1 as desired; k2 with a stale endpoint; k3 gone.
	current := []wgtypes.Peer{
		{PublicKey: k1, Endpoint: netUDPAddr(desired[0].Endpoint), AllowedIPs: ipNets(desired[0].AllowedIPs), PersistentKeepaliveInterval: ka},
		{PublicKey: k2, Endpoint: netUDPAddr(netip.MustParseAddrPort("192.0.2.99:51820")), AllowedIPs: ipNets(desired[1].AllowedIPs), PersistentKeepaliveInterval: ka},
		{PublicKey: k3},
	}
	ch := Change(current, desired, ka, nil)
	if len(ch) != 2 || ch[0].PublicKey != k2 || ch[0].Remove || !ch[0].ReplaceAllowedIPs || ch[0].Endpoint.String() != "192.0.2.3:51820" ||
		ch[1].PublicKey != k3 || !ch[1].Remove {
		t.Fatalf("change %+v", ch)
	}
	if len(Change(current[:1], desired[:1], ka, nil)) != 0 {
		t.Error("a converged device still gets changes")
	}
	// A PSK or keepalive change touches every peer.
	psk := key(t)
	if n := len(Change(current[:1], desired[:1], ka, &psk)); n != 1 {
		t.Errorf("PSK change: %d changes", n)
	}
	if n := len(Change(current[:1], desired[:1], 0, nil)); n != 1 {
		t.Errorf("keepalive change: %d changes", n)
	}
}

func TestSettings(t *testing.T) {
	nw, _, err := config.Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","PersistentKeepaliveInterval":25}}`))
	if err != nil {
		t.Fatal(err)
	}
	s, err := deriveSettings(backend.Params{Network: nw, Ext: netif.External{Name: "eth0", MTU: 1500}})
	if err != nil || s.mtu != 1420 || s.port != 51820 || s.keepalive != 25 || s.impl != "auto" {
		t.Errorf("settings %+v %v", s, err)
	}
	nw.Backend.MTU = 1300
	if _, err := deriveSettings(backend.Params{Network: nw, Ext: netif.External{Name: "eth0", MTU: 1500}}); err == nil {
		t.Error("MTU 1300 - 80 below 1280 accepted")
	}
}

func TestHandshakes(t *testing.T) {
	var h handshakes
	k := key(t)
	now := time.Now()
	n, recent := h.observe([]wgtypes.Peer{{PublicKey: k, LastHandshakeTime: now.Add(-time.Minute)}}, now)
	if n != 1 || recent != 1 {
		t.Errorf("first: %d %d", n, recent)
	}
	n, _ = h.observe([]wgtypes.Peer{{PublicKey: k, LastHandshakeTime: now.Add(-time.Minute)}}, now)
	if n != 1 {
		t.Errorf("unchanged counted: %d", n)
	}
	n, recent = h.observe([]wgtypes.Peer{{PublicKey: k, LastHandshakeTime: now.Add(-time.Minute)}}, now.Add(5*time.Minute))
	if n != 1 || recent != 0 {
		t.Errorf("stale: %d %d", n, recent)
	}
}

func TestDropReasons(t *testing.T) {
	var d userDrops
	if !d.count("Received invalid initiation message from %s") || d.count("%v - Received handshake initiation") {
		t.Fatal("drop formats")
	}
	m := map[string]uint64{}
	d.into(m)
	if m["invalid_handshake"] != 1 {
		t.Errorf("%v", m)
	}
}
