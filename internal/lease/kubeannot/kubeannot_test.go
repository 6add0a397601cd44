package kubeannot

import (
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/lease"
)

func TestNewKeysPrefixRules(t *testing.T) {
	long := strings.Repeat("a", 42) // with "-public-ipv6-overwrite": 64 characters
	tests := []struct {
		in   string
		want string // normalised prefix; "" = error
		// flannel says whether flanneld v0.28.9 accepts the prefix at
		// start (its pattern is unanchored): weft refuses those whose keys
		// the API server would refuse on the first patch.
		flannel bool
	}{
		// No "/": "/" appended.
		{"flannel.alpha.coreos.com", "flannel.alpha.coreos.com/", true},
		{"example.com", "example.com/", true},
		{"a.b.c.d", "a.b.c.d/", true},
		{"1.2", "1.2/", true},
		{"my-corp.example", "my-corp.example/", true},
		// A trailing "/" is kept.
		{"flannel.alpha.coreos.com/", "flannel.alpha.coreos.com/", true},
		// "/" not at the end, no trailing "-": "-" appended.
		{"example.com/weft", "example.com/weft-", true},
		{"example.com/we_ft", "example.com/we_ft-", true},
		{"example.com/w3", "example.com/w3-", true},
		// Trailing "-" kept.
		{"example.com/weft-", "example.com/weft-", true},
		{"example.com/weft--", "example.com/weft--", true},
		// More than one "/".
		{"example.com/a/b", "", false},
		{"example.com//", "", false},
		{"a/b/c", "", false},
		// Not a domain.
		{"", "", false},
		{"/", "", false},
		{"example", "", false},
		{"example/", "", false},
		{"example/weft", "", false},
		{"example.com./", "", false},
		{"example..com", "", false},
		{"exa mple.com", "", false},
		// Upper case, dots or other characters in the name.
		{"example.com/Weft", "", false},
		{"example.com/we.ft", "", false},
		{"example.com/we ft", "", false},
		{"example.com/-", "", false},
		// flannel's unanchored pattern lets these through; the API server
		// refuses their keys.
		{"Example.com", "", true},
		{".example.com", "", true},
		{" example.com", "", true},
		{"weird!.example.com", "", true},
		{"a..b.example.com", "", true},
		// flannel's pattern accepts these; Kubernetes' qualified names do not.
		{"my_corp.example", "", true},
		{"-corp.example", "", true},
		{"example.com-", "", true},
		{"example.com/_weft", "", true},
		{"example.com/" + long, "", true}, // name over 63 characters
		{"example.com/" + long[1:], "example.com/" + long[1:] + "-", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			k, err := NewKeys(tt.in)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("NewKeys(%q) = %q, want an error", tt.in, k.Prefix)
				}
				if msg := err.Error(); !strings.Contains(msg, Flag) || !strings.Contains(msg, `"`+tt.in+`"`) {
					t.Errorf("error %q does not name %s and the value", msg, Flag)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewKeys(%q): %v", tt.in, err)
			}
			if k.Prefix != tt.want {
				t.Errorf("prefix %q, want %q", k.Prefix, tt.want)
			}
			if got, wantSuffix := k.BackendType, tt.want+"backend-type"; got != wantSuffix {
				t.Errorf("backend-type key %q, want %q", got, wantSuffix)
			}
		})
	}
}

func TestKeyNames(t *testing.T) {
	k, err := NewKeys(DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	want := Keys{
		Prefix:              "flannel.alpha.coreos.com/",
		KubeSubnetManager:   "flannel.alpha.coreos.com/kube-subnet-manager",
		BackendType:         "flannel.alpha.coreos.com/backend-type",
		BackendData:         "flannel.alpha.coreos.com/backend-data",
		BackendV6Data:       "flannel.alpha.coreos.com/backend-v6-data",
		PublicIP:            "flannel.alpha.coreos.com/public-ip",
		PublicIPv6:          "flannel.alpha.coreos.com/public-ipv6",
		NodePublicIP:        "flannel.alpha.coreos.com/node-public-ip",
		NodePublicIPv6:      "flannel.alpha.coreos.com/node-public-ipv6",
		PublicIPOverwrite:   "flannel.alpha.coreos.com/public-ip-overwrite",
		PublicIPv6Overwrite: "flannel.alpha.coreos.com/public-ipv6-overwrite",
	}
	if k != want {
		t.Errorf("keys\n got %+v\nwant %+v", k, want)
	}
	s, err := NewKeys("example.com/foo")
	if err != nil {
		t.Fatal(err)
	}
	if s.BackendType != "example.com/foo-backend-type" {
		t.Errorf("slash prefix: backend-type key %q", s.BackendType)
	}
	if !k.Owns(k.PublicIP) || k.Owns("example.com/foo-public-ip") || k.Owns("flannel.alpha.coreos.com") {
		t.Error("Owns is wrong")
	}
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func addrp(s string) *netip.Addr {
	a := netip.MustParseAddr(s)
	return &a
}

const (
	vx4 = `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`
	vx6 = `{"VNI":1,"VtepMAC":"8a:11:0c:5e:20:01"}`
	wg4 = `{"PublicKey":"YJq3aWiUsQZ8cYtmkbIYLfRUZN3zFDwgWfEAHRV3s1Q=","Port":51820}`
	wg6 = `{"PublicKey":"YJq3aWiUsQZ8cYtmkbIYLfRUZN3zFDwgWfEAHRV3s1Q=","Port":51821}`
)

// The golden files hold every annotation a node carries once its agent
// has published attrs, as flanneld v0.28.9 writes them (kube.go:420-464,
// values from flannel-compat.md §2-3); the codec must produce them byte
// for byte and read the same attributes back.
func TestPublishGolden(t *testing.T) {
	tests := []struct {
		file   string
		prefix string
		cur    map[string]string // the node's annotations before
		attrs  lease.Attrs
		v4, v6 bool
		// back is what a reader sees; attrs when nil.
		back *lease.Attrs
	}{
		{file: "vxlan.json", attrs: lease.Attrs{PublicIP: addr("192.0.2.3"), BackendType: "vxlan",
			BackendData: json.RawMessage(vx4)}, v4: true},
		{file: "vxlan-dualstack.json", attrs: lease.Attrs{PublicIP: addr("192.0.2.3"), PublicIPv6: addrp("2001:db8::3"),
			BackendType: "vxlan", BackendData: json.RawMessage(vx4), BackendV6Data: json.RawMessage(vx6)}, v4: true, v6: true},
		// Backend data with spaces are written compact, as every flannel
		// backend marshals them.
		{file: "vxlan-ipv6only.json", attrs: lease.Attrs{PublicIPv6: addrp("2001:db8::3"), BackendType: "vxlan",
			BackendV6Data: json.RawMessage(`{"VNI": 1, "VtepMAC": "8a:11:0c:5e:20:01"}`)}, v6: true,
			back: &lease.Attrs{PublicIPv6: addrp("2001:db8::3"), BackendType: "vxlan", BackendV6Data: json.RawMessage(vx6)}},
		{file: "hostgw.json", attrs: lease.Attrs{PublicIP: addr("192.0.2.9"), BackendType: "host-gw"}, v4: true},
		{file: "hostgw-dualstack.json", attrs: lease.Attrs{PublicIP: addr("192.0.2.9"), PublicIPv6: addrp("2001:db8::9"),
			BackendType: "host-gw"}, v4: true, v6: true},
		{file: "hostgw-ipv6only.json", attrs: lease.Attrs{PublicIPv6: addrp("2001:db8::9"), BackendType: "host-gw"}, v6: true},
		{file: "udp.json", attrs: lease.Attrs{PublicIP: addr("192.0.2.7")}, v4: true},
		{file: "wireguard.json", attrs: lease.Attrs{PublicIP: addr("192.0.2.5"), BackendType: "wireguard",
			BackendData: json.RawMessage(wg4)}, v4: true},
		{file: "wireguard-dualstack.json", attrs: lease.Attrs{PublicIP: addr("192.0.2.5"), PublicIPv6: addrp("2001:db8::5"),
			BackendType: "wireguard", BackendData: json.RawMessage(wg4), BackendV6Data: json.RawMessage(wg6)}, v4: true, v6: true},
		{file: "wireguard-ipv6only.json", attrs: lease.Attrs{PublicIPv6: addrp("2001:db8::5"), BackendType: "wireguard",
			BackendV6Data: json.RawMessage(wg6)}, v6: true},
		{file: "vxlan-overwrite.json",
			cur: map[string]string{
				"flannel.alpha.coreos.com/public-ip-overwrite":   "203.0.113.3",
				"flannel.alpha.coreos.com/public-ipv6-overwrite": "2001:db8:ffff::3",
			},
			attrs: lease.Attrs{PublicIP: addr("192.0.2.3"), PublicIPv6: addrp("2001:db8::3"),
				BackendType: "vxlan", BackendData: json.RawMessage(vx4), BackendV6Data: json.RawMessage(vx6)}, v4: true, v6: true,
			back: &lease.Attrs{PublicIP: addr("203.0.113.3"), PublicIPv6: addrp("2001:db8:ffff::3"),
				BackendType: "vxlan", BackendData: json.RawMessage(vx4), BackendV6Data: json.RawMessage(vx6)}},
		{file: "vxlan-slash-prefix.json", prefix: "example.com/weft", attrs: lease.Attrs{PublicIP: addr("192.0.2.3"),
			BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":7,"VtepMAC":"c6:d2:32:6f:8f:44"}`)}, v4: true},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			prefix := tt.prefix
			if prefix == "" {
				prefix = DefaultPrefix
			}
			k, err := NewKeys(prefix)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			got, err := k.Published(tt.cur, tt.attrs)
			if err != nil {
				t.Fatal(err)
			}
			if b := render(t, got); b != string(want) {
				t.Errorf("published annotations:\n%s\nwant (%s):\n%s", b, tt.file, want)
			}

			// Writing only what differs: from nothing, everything but
			// what the operator had set; then nothing more.
			changes, err := k.Changes(tt.cur, tt.attrs)
			if err != nil {
				t.Fatal(err)
			}
			for key, v := range got {
				if old, ok := tt.cur[key]; ok && old == v {
					if _, ok := changes[key]; ok {
						t.Errorf("change %s=%q rewrites the value already there", key, v)
					}
				} else if changes[key] != v {
					t.Errorf("change %s=%q, want %q", key, changes[key], v)
				}
			}
			if len(changes)+len(tt.cur) < len(got) {
				t.Errorf("changes %v miss some of %v", changes, got)
			}
			again, err := k.Changes(got, tt.attrs)
			if err != nil {
				t.Fatal(err)
			}
			if again != nil {
				t.Errorf("a node already publishing the attrs gets changes %v", again)
			}

			back, err := k.Attrs(got, tt.v4, tt.v6)
			if err != nil {
				t.Fatalf("read back: %v", err)
			}
			wantBack := tt.attrs
			if tt.back != nil {
				wantBack = *tt.back
			}
			if !back.Equal(wantBack) || string(back.BackendData) != string(wantBack.BackendData) ||
				string(back.BackendV6Data) != string(wantBack.BackendV6Data) {
				t.Errorf("read back %+v\n     want %+v", back, wantBack)
			}
			if !k.Managed(got) {
				t.Error("not managed")
			}
		})
	}
}

func render(t *testing.T, m map[string]string) string {
	t.Helper()
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b) + "\n"
}

// flannel writes the whole set when any part differs; a node changes only
// what changed (here: a new VtepMAC after the device was recreated).
func TestChangesOnlyDifferences(t *testing.T) {
	k, _ := NewKeys(DefaultPrefix)
	a := lease.Attrs{PublicIP: addr("192.0.2.3"), BackendType: "vxlan", BackendData: json.RawMessage(vx4)}
	cur, err := k.Published(map[string]string{"other.example/x": "y"}, a)
	if err != nil {
		t.Fatal(err)
	}
	a.BackendData = json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`)
	got, err := k.Changes(cur, a)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{k.BackendData: `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("changes %v, want %v", got, want)
	}
	// A node that was flannel's with another backend moves to ours.
	cur[k.BackendType] = "host-gw"
	cur[k.KubeSubnetManager] = "false"
	got, _ = k.Changes(cur, a)
	want[k.BackendType], want[k.KubeSubnetManager] = "vxlan", "true"
	if !reflect.DeepEqual(got, want) {
		t.Errorf("changes %v, want %v", got, want)
	}
	// nil annotations (a Node object that never had any) are fine.
	if got, err := k.Changes(nil, a); err != nil || len(got) != 4 {
		t.Errorf("Changes(nil) = %v, %v", got, err)
	}
}

func TestPublishRefuses(t *testing.T) {
	k, _ := NewKeys(DefaultPrefix)
	for name, tt := range map[string]struct {
		cur map[string]string
		a   lease.Attrs
	}{
		"bad overwrite":      {map[string]string{k.PublicIPOverwrite: "banana"}, lease.Attrs{PublicIP: addr("192.0.2.1"), BackendType: "host-gw"}},
		"v6 overwrite on v4": {map[string]string{k.PublicIPOverwrite: "2001:db8::1"}, lease.Attrs{PublicIP: addr("192.0.2.1"), BackendType: "host-gw"}},
		"bad v6 overwrite": {map[string]string{k.PublicIPv6Overwrite: "192.0.2.1"},
			lease.Attrs{PublicIP: addr("192.0.2.1"), PublicIPv6: addrp("2001:db8::1"), BackendType: "host-gw"}},
		"v6 data, no v6 address": {nil, lease.Attrs{PublicIP: addr("192.0.2.1"), BackendType: "vxlan",
			BackendData: json.RawMessage(vx4), BackendV6Data: json.RawMessage(vx6)}},
		"data not JSON": {nil, lease.Attrs{PublicIP: addr("192.0.2.1"), BackendType: "vxlan", BackendData: json.RawMessage(`{`)}},
	} {
		if got, err := k.Changes(tt.cur, tt.a); err == nil {
			t.Errorf("%s: Changes = %v, want an error", name, got)
		}
	}
}

func TestAttrsRejects(t *testing.T) {
	k, _ := NewKeys(DefaultPrefix)
	ok := map[string]string{k.PublicIP: "192.0.2.1", k.PublicIPv6: "2001:db8::1", k.BackendType: "vxlan",
		k.BackendData: vx4, k.BackendV6Data: vx6, k.KubeSubnetManager: "true"}
	if _, err := k.Attrs(ok, true, true); err != nil {
		t.Fatal(err)
	}
	with := func(key, v string) map[string]string {
		m := map[string]string{}
		for k, v := range ok {
			m[k] = v
		}
		if v == "<delete>" {
			delete(m, key)
		} else {
			m[key] = v
		}
		return m
	}
	for _, tt := range []struct {
		name   string
		ann    map[string]string
		v4, v6 bool
	}{
		{"no public-ip", with(k.PublicIP, "<delete>"), true, false},
		{"public-ip v6", with(k.PublicIP, "2001:db8::2"), true, false},
		{"public-ip garbage", with(k.PublicIP, "x"), true, false},
		{"no public-ipv6", with(k.PublicIPv6, "<delete>"), false, true},
		{"public-ipv6 v4", with(k.PublicIPv6, "192.0.2.1"), true, true},
		{"backend-data not JSON", with(k.BackendData, "{VNI:1}"), true, false},
		{"backend-v6-data not JSON", with(k.BackendV6Data, "{"), false, true},
	} {
		if a, err := k.Attrs(tt.ann, tt.v4, tt.v6); err == nil {
			t.Errorf("%s: Attrs = %+v, want an error", tt.name, a)
		}
	}
	// The family not enabled is not read at all.
	if _, err := k.Attrs(with(k.PublicIPv6, "x"), true, false); err != nil {
		t.Errorf("IPv6 read with IPv6 disabled: %v", err)
	}
	// An IPv4-mapped public-ip is read as IPv4, as flannel's To4 does.
	if a, err := k.Attrs(with(k.PublicIP, "::ffff:192.0.2.8"), true, false); err != nil || a.PublicIP != addr("192.0.2.8") {
		t.Errorf("mapped public-ip: %+v, %v", a, err)
	}
	if k.Managed(nil) || k.Managed(with(k.KubeSubnetManager, "True")) || k.Managed(with(k.KubeSubnetManager, "<delete>")) {
		t.Error("Managed accepts other than \"true\"")
	}
}

func TestNodePublicIPs(t *testing.T) {
	k, _ := NewKeys(DefaultPrefix)
	v4, v6, err := k.NodePublicIPs(nil)
	if err != nil || v4.IsValid() || v6.IsValid() {
		t.Errorf("none: %v %v %v", v4, v6, err)
	}
	v4, v6, err = k.NodePublicIPs(map[string]string{k.NodePublicIP: "198.51.100.4", k.NodePublicIPv6: "2001:db8::4"})
	if err != nil || v4 != addr("198.51.100.4") || v6 != addr("2001:db8::4") {
		t.Errorf("both: %v %v %v", v4, v6, err)
	}
	if _, _, err := k.NodePublicIPs(map[string]string{k.NodePublicIP: "2001:db8::4"}); err == nil || !strings.Contains(err.Error(), k.NodePublicIP) {
		t.Errorf("v6 in node-public-ip: %v", err)
	}
	if _, _, err := k.NodePublicIPs(map[string]string{k.NodePublicIPv6: "nope"}); err == nil || !strings.Contains(err.Error(), k.NodePublicIPv6) {
		t.Errorf("garbage node-public-ipv6: %v", err)
	}
}

func TestVtepMACs(t *testing.T) {
	k, _ := NewKeys("example.com/weft")
	mac := func(s string) net.HardwareAddr {
		m, _ := net.ParseMAC(s)
		return m
	}
	for _, tt := range []struct {
		d4, d6 string
		v4, v6 net.HardwareAddr
	}{
		{vx4, vx6, mac("c6:d2:32:6f:8f:44"), mac("8a:11:0c:5e:20:01")},
		{vx4, "", mac("c6:d2:32:6f:8f:44"), nil},
		{"null", "null", nil, nil},
		{wg4, "{", nil, nil},
		{`{"VNI":1,"VtepMAC":"zz"}`, `{"VtepMAC":"00:11:22:33:44:55:66:77"}`, nil, nil},
	} {
		ann := map[string]string{}
		if tt.d4 != "" {
			ann[k.BackendData] = tt.d4
		}
		if tt.d6 != "" {
			ann[k.BackendV6Data] = tt.d6
		}
		v4, v6 := k.VtepMACs(ann)
		if v4.String() != tt.v4.String() || v6.String() != tt.v6.String() {
			t.Errorf("VtepMACs(%q, %q) = %v, %v; want %v, %v", tt.d4, tt.d6, v4, v6, tt.v4, tt.v6)
		}
	}
}
