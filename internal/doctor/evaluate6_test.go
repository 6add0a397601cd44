package doctor

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

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

	tests := []struct {
		name   string
		break_ func(*Facts)
		check  string
		status Status
		text   string
	}{
		{"device missing", func(f *Facts) { f.Node.Links = f.Node.Links[:len(f.Node.Links)-1] }, "device-v6", Fail, "flannel-v6.1 not found"},
		{"address missing", func(f *Facts) { f.Node.Links[len(f.Node.Links)-1].Addrs = nil }, "device-v6", Fail, "lacks address fd00:10:244:1::/128"},
		{"accept_ra", func(f *Facts) { f.Node.Sysctls["net/ipv6/conf/flannel-v6.1/accept_ra"] = "1" }, "device-v6", Warn, "accept_ra = 1"},
		{"route missing", func(f *Facts) { f.Node.IPv6.Routes = f.Node.IPv6.Routes[:3] }, "routes-v6", Fail, "missing: fd00:10:244:2::/64 via fd00:10:244:2:: dev flannel-v6.1 onlink"},
		{"neighbour missing", func(f *Facts) { f.Node.IPv6.Neighs = nil }, "neighbours-v6", Fail, "missing: fd00:10:244:2:: lladdr " + mac6b.String()},
		{"fdb wrong", func(f *Facts) { f.Node.IPv6.FDB[0].Dst = addr("2001:db8::99") }, "fdb-v6", Fail, "dst 2001:db8::2"},
		{"forwarding off", func(f *Facts) { f.Node.Sysctls["net/ipv6/conf/all/forwarding"] = "0" }, "ip6-forward", Fail, "forwarding = 0"},
		{"masq flushed", func(f *Facts) { f.Node.IPv6.Masq.Rules = []string{"-N " + masq.ChainPostrouting} }, "masquerade-v6", Fail, "lacks 6 rules"},
		{"masq jump", func(f *Facts) { f.Node.IPv6.Masq.Jump = false }, "masquerade-v6", Fail, "does not jump"},
		{"subnet.env stale", func(f *Facts) { f.SubnetFile.Env.IPv6Network = pfx("fd00:99::/56") }, "subnet-file", Fail, "FLANNEL_IPV6_NETWORK fd00:99::/56"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := healthyDual()
			tt.break_(&f)
			x, ok := find(Evaluate(f), tt.check)
			text := strings.Join(append([]string{x.Message}, x.Details...), "\n")
			if !ok || x.Status != tt.status || !strings.Contains(text, tt.text) {
				t.Errorf("%s = %s %q, want %s with %q", tt.check, x.Status, text, tt.status, tt.text)
			}
		})
	}

	// Without IPv6 in the config, no IPv6 checks.
	for _, x := range Evaluate(healthy()).Results {
		if strings.HasSuffix(x.Check, "-v6") || x.Check == "ip6-forward" {
			t.Errorf("IPv4-only network has check %s", x.Check)
		}
	}
}
