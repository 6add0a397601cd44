package doctor

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/masq"
	"github.com/weft-net/weft/internal/netlinkx"
)

const dev6Idx = 7

var (
	mac6a = netlinkx.MAC{0xaa, 0, 0, 0, 6, 1}
	mac6b = netlinkx.MAC{0xaa, 0, 0, 0, 6, 2}
)

// healthyDual is healthy() in a dual-stack network: flannel-v6.1 with the
// IPv6 halves of both leases, everything in place.
func healthyDual() Facts {
	f := healthy()
	f.Store.Config = []byte(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`)
	dual := func(pub, pub6 string, mac, mac6 netlinkx.MAC) []byte {
		return fmt.Appendf(nil, `{"PublicIP":%q,"PublicIPv6":%q,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q},"BackendV6Data":{"VNI":1,"VtepMAC":%q}}`, pub, pub6, mac, mac6)
	}
	f.Store.Leases[0].Key, f.Store.Leases[0].Value = "10.244.1.0-24&fd00:10:244:1::-64", dual("192.0.2.1", "2001:db8::1", mac1, mac6a)
	f.Store.Leases[1].Key, f.Store.Leases[1].Value = "10.244.2.0-24&fd00:10:244:2::-64", dual("192.0.2.2", "2001:db8::2", mac2, mac6b)
	f.SubnetFile.Env.IPv6Network = pfx("fd00:10:244::/56")
	f.SubnetFile.Env.IPv6Subnet = pfx("fd00:10:244:1::1/64")
	n := &f.Node
	n.Ext.Addr6, n.Ext.PublicIPv6, n.Ext.Subnet6 = addr("2001:db8::1"), addr("2001:db8::1"), pfx("2001:db8::/64")
	n.Links = append(n.Links, Link{Name: "flannel-v6.1", Index: dev6Idx, Kind: "vxlan", MTU: 1430, Up: true,
		Addrs: []netip.Prefix{pfx("fd00:10:244:1::/128"), pfx("fe80::2/64")}})
	n.IPv6 = &IPv6Facts{
		Routes: []netlinkx.Route{
			{Dst: pfx("2001:db8::/64"), LinkIndex: ulIdx},
			{Dst: pfx("fd00:10:244:1::/128"), LinkIndex: dev6Idx},
			{Dst: pfx("fd00:10:244:1::/64"), LinkIndex: brIdx},
			{Dst: pfx("fd00:10:244:2::/64"), Gw: addr("fd00:10:244:2::"), LinkIndex: dev6Idx, OnLink: true},
		},
		Neighs: []netlinkx.Neigh{{LinkIndex: dev6Idx, IP: addr("fd00:10:244:2::"), MAC: mac6b, State: netlinkx.NUDPermanent}},
		FDB:    []netlinkx.FDB{{LinkIndex: dev6Idx, MAC: mac6b, Dst: addr("2001:db8::2")}},
		Masq:   MasqFacts{Checked: true, Tool: "ip6tables", ChainExists: true, Jump: true, Rules: iptablesListing(pfx("fd00:10:244::/56"), pfx("fd00:10:244:1::/64"))},
	}
	n.Sysctls["net/ipv6/conf/all/forwarding"] = "1"
	n.Sysctls["net/ipv6/conf/flannel-v6.1/accept_ra"] = "0"
	return f
}

func TestIPv6Checks(t *testing.T) {
	r := Evaluate(healthyDual())
	for _, c := range []string{"device-v6", "routes-v6", "neighbours-v6", "fdb-v6", "ip6-forward", "masquerade-v6", "subnet-file"} {
		x, ok := find(r, c)
		if !ok || x.Status != OK {
			t.Errorf("healthy dual stack: %s = %+v", c, x)
		}
	}
	if x, _ := find(r, "subnet-file"); !strings.Contains(x.Message, "IPv6 network fd00:10:244::/56, subnet fd00:10:244:1::1/64") {
		t.Errorf("subnet-file: %s", x.Message)
	}
	if x, _ := find(r, "underlay"); x.Message != "eth0 (MTU 1500, 192.0.2.0/24, 2001:db8::/64), public IP 192.0.2.1, public IPv6 2001:db8::1" {
		t.Errorf("underlay: %s", x.Message)
	}

	runEvalCases(t, healthyDual, []evalCase{
		{name: "device missing", mutate: func(f *Facts) { f.Node.Links = f.Node.Links[:len(f.Node.Links)-1] }, check: "device-v6", status: Fail, want: []string{"flannel-v6.1 not found"}},
		{name: "address missing", mutate: func(f *Facts) { f.Node.Links[len(f.Node.Links)-1].Addrs = nil }, check: "device-v6", status: Fail, want: []string{"lacks address fd00:10:244:1::/128"}},
		{name: "accept_ra", mutate: func(f *Facts) { f.Node.Sysctls["net/ipv6/conf/flannel-v6.1/accept_ra"] = "1" }, check: "device-v6", status: Warn, want: []string{"accept_ra = 1"}},
		{name: "device MTU too big", mutate: func(f *Facts) { f.Node.Links[len(f.Node.Links)-1].MTU = 1450 }, check: "device-v6", status: Fail, want: []string{"MTU 1450 exceeds 1430 (eth0 1500 − 70)"}},
		{name: "device MTU below", mutate: func(f *Facts) { f.Node.Links[len(f.Node.Links)-1].MTU = 1300 }, check: "device-v6", status: Warn, want: []string{"MTU 1300 is below 1430 (eth0 1500 − 70)"}},
		{name: "route missing", mutate: func(f *Facts) { f.Node.IPv6.Routes = f.Node.IPv6.Routes[:3] }, check: "routes-v6", status: Fail, want: []string{"missing: fd00:10:244:2::/64 via fd00:10:244:2:: dev flannel-v6.1 onlink"}},
		{name: "lease not programmable", mutate: func(f *Facts) {
			f.Store.Leases = append(f.Store.Leases, RawLease{Key: "10.244.3.0-24&fd00:10:244:3::-64", Value: []byte(`{"PublicIP":"192.0.2.3","PublicIPv6":"2001:db8::3","BackendType":"host-gw"}`), LeaseID: 3, TTL: 20 * time.Hour})
		}, check: "routes-v6", status: Warn, want: []string{"1 leases not programmable"}},
		{name: "neighbour missing", mutate: func(f *Facts) { f.Node.IPv6.Neighs = nil }, check: "neighbours-v6", status: Fail, want: []string{"missing: fd00:10:244:2:: lladdr " + mac6b.String()}},
		{name: "fdb wrong", mutate: func(f *Facts) { f.Node.IPv6.FDB[0].Dst = addr("2001:db8::99") }, check: "fdb-v6", status: Fail, want: []string{"dst 2001:db8::2"}},
		{name: "forwarding off", mutate: func(f *Facts) { f.Node.Sysctls["net/ipv6/conf/all/forwarding"] = "0" }, check: "ip6-forward", status: Fail, want: []string{"forwarding = 0"}},
		{name: "masq flushed", mutate: func(f *Facts) { f.Node.IPv6.Masq.Rules = []string{"-N " + masq.ChainPostrouting} }, check: "masquerade-v6", status: Fail, want: []string{"lacks 6 rules"}},
		{name: "masq jump", mutate: func(f *Facts) { f.Node.IPv6.Masq.Jump = false }, check: "masquerade-v6", status: Fail, want: []string{"does not jump"}},
		{name: "subnet.env stale", mutate: func(f *Facts) { f.SubnetFile.Env.IPv6Network = pfx("fd00:99::/56") }, check: "subnet-file", status: Fail, want: []string{"FLANNEL_IPV6_NETWORK fd00:99::/56"}},
	})

	// Without IPv6 in the config, no IPv6 checks.
	for _, x := range Evaluate(healthy()).Results {
		if strings.HasSuffix(x.Check, "-v6") || x.Check == "ip6-forward" {
			t.Errorf("IPv4-only network has check %s", x.Check)
		}
	}
}

// What this node lacks of a peer's IPv6 half shows in the cluster view,
// as its IPv4 half's does.
func TestIPv6Missing(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(*Facts)
		want   string
	}{
		{"route", func(f *Facts) { f.Node.IPv6.Routes = f.Node.IPv6.Routes[:3] }, "IPv6 route"},
		{"neighbour", func(f *Facts) { f.Node.IPv6.Neighs = nil }, "IPv6 neighbour entry"},
		{"fdb", func(f *Facts) { f.Node.IPv6.FDB = nil }, "IPv6 fdb entry"},
	} {
		f := healthyDual()
		tc.break_(&f)
		var got string
		for _, l := range ClusterView(f).Leases {
			if l.Subnet == pfx("10.244.2.0/24") {
				got = l.Missing
			}
		}
		if got != tc.want {
			t.Errorf("%s missing: the peer lacks %q, want %q", tc.name, got, tc.want)
		}
	}
}
