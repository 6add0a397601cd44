package status

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/doctor"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func view() doctor.View {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	vx := func(mac string) json.RawMessage { return json.RawMessage(`{"VNI":1,"VtepMAC":"` + mac + `"}`) }
	return doctor.View{
		Report: doctor.Report{Results: []doctor.Result{
			{Check: "store", Status: doctor.OK, Message: "etcd http://192.0.2.254:2379 v3.7.3"},
			{Check: "config", Status: doctor.OK, Message: "network 10.244.0.0/16, backend vxlan"},
			{Check: "agent", Status: doctor.OK, Message: "weftd pid 7 runs in this network namespace"},
			{Check: "readyz", Status: doctor.OK, Message: "GET http://127.0.0.1:8471/readyz: ready"},
			{Check: "peer", Status: doctor.Fail, Message: "VXLAN (UDP 8472) to 192.0.2.3 dropped"},
		}},
		Own:        p("10.244.1.0/24"),
		Programmed: true,
		Leases: []doctor.LeaseView{
			{Key: "10.244.1.0-24", Subnet: p("10.244.1.0/24"), PublicIP: a("192.0.2.1"), BackendType: "vxlan", BackendData: vx("aa:00:00:00:00:01"), Own: true, TTLKnown: true, TTL: doctor.Seconds(23*time.Hour + 10*time.Minute), Renewed: doctor.Seconds(50 * time.Minute)},
			{Key: "10.244.2.0-24", Subnet: p("10.244.2.0/24"), PublicIP: a("192.0.2.2"), BackendType: "vxlan", BackendData: vx("aa:00:00:00:00:02"), Reservation: true,
				Probe: &doctor.ProbeView{Status: doctor.OK, RTT: doctor.Millis(420 * time.Microsecond)}},
			{Key: "10.244.3.0-24", Subnet: p("10.244.3.0/24"), PublicIP: a("192.0.2.3"), BackendType: "vxlan", BackendData: vx("aa:00:00:00:00:03"), TTLKnown: true, TTL: doctor.Seconds(5 * time.Hour), Renewed: doctor.Seconds(19 * time.Hour), Missing: "route",
				Probe: &doctor.ProbeView{Status: doctor.Fail, Message: "VXLAN (UDP 8472) to 192.0.2.3 dropped"}},
			{Key: "10.244.4.0-24", Subnet: p("10.244.4.0/24"), PublicIP: a("192.0.2.4"), BackendType: "vxlan", BackendData: vx("aa:00:00:00:00:04"), TTLKnown: true, TTL: doctor.Seconds(-time.Second), Expired: true},
		},
		Stale: []netip.Prefix{p("10.244.5.0/24")},
	}
}

func TestBuild(t *testing.T) {
	s := Build(view())
	if s.OK {
		t.Error("OK with an expired lease, a missing route and a stale one")
	}
	states := map[string]string{}
	for _, r := range s.Rows {
		states[r.Key] = r.State
	}
	want := map[string]string{"10.244.1.0-24": "this node", "10.244.2.0-24": "programmed", "10.244.3.0-24": "missing route", "10.244.4.0-24": "expired"}
	for k, v := range want {
		if states[k] != v {
			t.Errorf("%s: state %q, want %q", k, states[k], v)
		}
	}
	all := strings.Join(s.Problems, "\n")
	for _, w := range []string{"10.244.4.0-24 (192.0.2.4): lease expired", "10.244.3.0-24 (192.0.2.3): this node lacks its route",
		"10.244.3.0-24 (192.0.2.3): VXLAN (UDP 8472) to 192.0.2.3 dropped", "10.244.5.0/24 is routed but no lease holds it"} {
		if !strings.Contains(all, w) {
			t.Errorf("problems lack %q:\n%s", w, all)
		}
	}
	if len(s.Problems) != 4 {
		t.Errorf("%d problems, want 4 (the peer's failure once):\n%s", len(s.Problems), all)
	}

	v := view()
	v.Leases = v.Leases[:2]
	v.Leases[1].Probe = nil
	v.Report.Results = v.Report.Results[:4]
	v.Stale = nil
	if s := Build(v); !s.OK || len(s.Problems) != 0 {
		t.Errorf("healthy: problems %v", s.Problems)
	}
	v.Leases = v.Leases[1:]
	if s := Build(v); s.OK || !strings.Contains(strings.Join(s.Problems, ""), "this node's subnet 10.244.1.0/24 has no lease") {
		t.Errorf("own lease gone: problems %v", s.Problems)
	}
}

// The text and JSON of an IPv4 cluster (status.*) and of a dual-stack one
// (status6.*).
func TestGolden(t *testing.T) {
	for prefix, v := range map[string]doctor.View{"status": view(), "status6": view6()} {
		s := Build(v)
		var text, js bytes.Buffer
		if err := s.WriteText(&text); err != nil {
			t.Fatal(err)
		}
		if err := s.WriteJSON(&js); err != nil {
			t.Fatal(err)
		}
		for name, got := range map[string][]byte{prefix + ".txt.golden": text.Bytes(), prefix + ".json.golden": js.Bytes()} {
			path := filepath.Join("testdata", name)
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs:\n got:\n%s\nwant:\n%s", name, got, want)
			}
		}
	}
}

// view6 is a dual-stack node's view: one peer programmed and answering
// over both families, one lacking its IPv6 route whose IPv6 probe fails.
func view6() doctor.View {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	vx := func(mac string) json.RawMessage { return json.RawMessage(`{"VNI":1,"VtepMAC":"` + mac + `"}`) }
	ttl := doctor.Seconds(23 * time.Hour)
	return doctor.View{
		Report: doctor.Report{Results: []doctor.Result{
			{Check: "store", Status: doctor.OK, Message: "etcd http://192.0.2.254:2379 v3.7.3"},
			{Check: "config", Status: doctor.OK, Message: "network 10.244.0.0/16, IPv6 network fd00:10:244::/56, backend vxlan"},
			{Check: "agent", Status: doctor.OK, Message: "weftd pid 7 runs in this network namespace"},
			{Check: "routes-v6", Status: doctor.Fail, Message: "1 of 2 IPv6 routes to remote subnets on flannel-v6.1 present: 1 missing"},
			{Check: "peer", Status: doctor.Fail, Message: "lost"},
		}},
		Own: p("10.244.1.0/24"), Own6: p("fd00:10:244:1::/64"),
		Programmed: true, ProgrammedIPv6: true,
		Leases: []doctor.LeaseView{
			{Key: "10.244.1.0-24&fd00:10:244:1::-64", Subnet: p("10.244.1.0/24"), IPv6Subnet: p("fd00:10:244:1::/64"), PublicIP: a("192.0.2.1"), PublicIPv6: a("2001:db8::1"),
				BackendType: "vxlan", BackendData: vx("aa:00:00:00:00:01"), Own: true, TTLKnown: true, TTL: ttl},
			{Key: "10.244.2.0-24&fd00:10:244:2::-64", Subnet: p("10.244.2.0/24"), IPv6Subnet: p("fd00:10:244:2::/64"), PublicIP: a("192.0.2.2"), PublicIPv6: a("2001:db8::2"),
				BackendType: "vxlan", BackendData: vx("aa:00:00:00:00:02"), TTLKnown: true, TTL: ttl,
				Probe:     &doctor.ProbeView{Status: doctor.OK, RTT: doctor.Millis(420 * time.Microsecond)},
				ProbeIPv6: &doctor.ProbeView{Status: doctor.OK, RTT: doctor.Millis(510 * time.Microsecond)}},
			{Key: "10.244.3.0-24&fd00:10:244:3::-64", Subnet: p("10.244.3.0/24"), IPv6Subnet: p("fd00:10:244:3::/64"), PublicIP: a("192.0.2.3"), PublicIPv6: a("2001:db8::3"),
				BackendType: "vxlan", BackendData: vx("aa:00:00:00:00:03"), TTLKnown: true, TTL: ttl, Missing: "IPv6 route",
				Probe: &doctor.ProbeView{Status: doctor.OK, RTT: doctor.Millis(380 * time.Microsecond)},
				ProbeIPv6: &doctor.ProbeView{Status: doctor.Fail,
					Message: "2001:db8::3 (fd00:10:244:3::/64): fd00:10:244:3:: through VXLAN over IPv6 (UDP 8472) lost: this node lacks its IPv6 route"}},
		},
	}
}

func TestBuildDualStack(t *testing.T) {
	s := Build(view6())
	if s.OK {
		t.Error("OK with an IPv6 route missing")
	}
	var states []string
	for _, r := range s.Rows {
		states = append(states, r.State)
	}
	if want := []string{"this node", "programmed", "missing IPv6 route"}; strings.Join(states, "|") != strings.Join(want, "|") {
		t.Errorf("states %q, want %q", states, want)
	}
	all := strings.Join(s.Problems, "\n")
	for _, w := range []string{"10.244.3.0-24&fd00:10:244:3::-64 (192.0.2.3): this node lacks its IPv6 route",
		"10.244.3.0-24&fd00:10:244:3::-64 (192.0.2.3): 2001:db8::3 (fd00:10:244:3::/64): fd00:10:244:3:: through VXLAN over IPv6 (UDP 8472) lost",
		"routes-v6: 1 of 2 IPv6 routes"} {
		if !strings.Contains(all, w) {
			t.Errorf("problems lack %q:\n%s", w, all)
		}
	}

	// The IPv6 checks did not run (no flannel-v6.1, say): the rows say
	// what is known, and nothing is called programmed over IPv6.
	v := view6()
	v.ProgrammedIPv6 = false
	v.Leases[2].Missing, v.Leases[2].ProbeIPv6 = "", nil
	v.Report.Results = v.Report.Results[:3]
	s = Build(v)
	if got := s.Rows[1].State; got != "IPv4 programmed, IPv6 unknown" {
		t.Errorf("IPv6 unchecked: state %q", got)
	}
	if !s.OK {
		t.Errorf("IPv6 unchecked, nothing failing: problems %q", s.Problems)
	}
	v.Programmed = false
	if got := Build(v).Rows[1].State; got != "unknown" {
		t.Errorf("nothing checked: state %q", got)
	}

	// IPv6 only: leases without an IPv4 subnet, this node's by its IPv6 one.
	v = view6()
	v.Own, v.Programmed = netip.Prefix{}, false
	for i := range v.Leases {
		l := &v.Leases[i]
		l.Subnet, l.PublicIP, l.Probe = netip.Prefix{}, netip.Addr{}, nil
		l.BackendData, l.BackendV6Data = nil, l.BackendData // its VtepMAC is the IPv6 device's
		l.Key = strings.SplitN(l.Key, "&", 2)[1]
	}
	s = Build(v)
	states = nil
	for _, r := range s.Rows {
		states = append(states, r.State)
	}
	if want := []string{"this node", "programmed", "missing IPv6 route"}; strings.Join(states, "|") != strings.Join(want, "|") {
		t.Errorf("IPv6 only: states %q, want %q", states, want)
	}
	if !strings.Contains(strings.Join(s.Problems, "\n"), "fd00:10:244:3::-64 (2001:db8::3): this node lacks its IPv6 route") {
		t.Errorf("IPv6 only: problems %q", s.Problems)
	}
	var text strings.Builder
	if err := s.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if out := text.String(); strings.Contains(out, "invalid") || strings.Contains(out, "-,") ||
		!regexp.MustCompile(`fd00:10:244:2::-64 +fd00:10:244:2::/64 +2001:db8::2 +vxlan +aa:00:00:00:00:02 `).MatchString(out) {
		t.Errorf("IPv6 only: table\n%s", out)
	}
	v.Leases = v.Leases[1:]
	if s := Build(v); !strings.Contains(strings.Join(s.Problems, "\n"), "this node's subnet fd00:10:244:1::/64 has no lease") {
		t.Errorf("IPv6 only, own lease gone: problems %q", s.Problems)
	}
}

// TestWireGuardKey: a wireguard lease's row shows its key's fingerprint
// (the first 8 base64 characters, as the text table prints it), taken
// from BackendV6Data when an IPv6-only lease has no BackendData.
func TestWireGuardKey(t *testing.T) {
	const key4, key6 = "q5CdaJ9+L7JPAWLqxCwgcaY7WVbZFFYrz8/PXEpcimw=", "Ni0gmylCFr5J3bqGx2uGq1hc0P6CVOtrtN1e2vxdVzc="
	wg := func(key string) json.RawMessage {
		return json.RawMessage(`{"PublicKey":"` + key + `","Port":51820}`)
	}
	v := view()
	v.Leases = v.Leases[:2]
	v.Report.Results = v.Report.Results[:4]
	v.Stale = nil
	v.Leases[0].BackendType, v.Leases[0].BackendData = "wireguard", wg(key4)
	v.Leases[1].BackendType, v.Leases[1].BackendData, v.Leases[1].BackendV6Data = "wireguard", nil, wg(key6)
	s := Build(v)
	for i, want := range []string{"key q5CdaJ9+…", "key Ni0gmylC…"} {
		if s.Rows[i].Data != want {
			t.Errorf("%s: data %q, want %q", s.Rows[i].Key, s.Rows[i].Data, want)
		}
	}
	var text bytes.Buffer
	if err := s.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^10\.244\.1\.0-24 +10\.244\.1\.0/24 +192\.0\.2\.1 +wireguard +key q5CdaJ9\+… `).Match(text.Bytes()) {
		t.Errorf("the table lacks node 1's key fingerprint:\n%s", text.String())
	}
	v.Leases[0].BackendData = json.RawMessage(`{"PublicKey":`)
	if d := Build(v).Rows[0].Data; d != "unparsable" {
		t.Errorf("broken backend data: %q, want unparsable", d)
	}
}

// A subnet routed without a lease that is a Node's podCIDR (Kubernetes
// store) is shown and named with that Node; one of no Node as before.
func TestStaleNode(t *testing.T) {
	v := view()
	v.Stale = append(v.Stale, netip.MustParsePrefix("10.244.6.0/24"))
	v.StaleNode = map[netip.Prefix]string{netip.MustParsePrefix("10.244.6.0/24"): "n6"}
	s := Build(v)
	all := strings.Join(s.Problems, "\n")
	for _, w := range []string{"10.244.5.0/24 is routed but no lease holds it: its node's lease expired or was deleted",
		"10.244.6.0/24 is routed but no lease holds it: Node n6 has it as podCIDR but publishes no usable lease"} {
		if !strings.Contains(all, w) {
			t.Errorf("problems lack %q:\n%s", w, all)
		}
	}
	var text, js bytes.Buffer
	if err := s.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, re := range []string{`(?m)^- +10\.244\.5\.0/24 .* routed, stale$`, `(?m)^n6 +10\.244\.6\.0/24 .* routed, stale$`} {
		if !regexp.MustCompile(re).Match(text.Bytes()) {
			t.Errorf("the table lacks %s:\n%s", re, text.String())
		}
	}
	if err := s.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var got struct{ StaleNodes map[string]string }
	if err := json.Unmarshal(js.Bytes(), &got); err != nil || len(got.StaleNodes) != 1 || got.StaleNodes["10.244.6.0/24"] != "n6" {
		t.Errorf("JSON staleNodes %v (%v):\n%s", got.StaleNodes, err, js.String())
	}
}
