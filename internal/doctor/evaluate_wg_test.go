package doctor

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/netlinkx"
)

const (
	wgKey1 = "q5CdaJ9+L7JPAWLqxCwgcaY7WVbZFFYrz8/PXEpcimw="
	wgKey2 = "Ni0gmylCFr5J3bqGx2uGq1hc0P6CVOtrtN1e2vxdVzc="
)

// healthyWGDual is a dual-stack wireguard node in mode separate, as weftd
// leaves it: flannel-wg (userspace, a TUN) with the IPv4 /32 and the route
// to Network, flannel-wg-v6 with the IPv6 /128 and the route to
// IPv6Network, both MTU 1500 − 80.
func healthyWGDual(mode string) Facts {
	f := healthyDual()
	backend := `{"Type":"wireguard"}`
	if mode != "" {
		backend = fmt.Sprintf(`{"Type":"wireguard","Mode":%q}`, mode)
	}
	f.Store.Config = []byte(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":` + backend + `}`)
	wg := func(pub, pub6, key string) []byte {
		return fmt.Appendf(nil, `{"PublicIP":%q,"PublicIPv6":%q,"BackendType":"wireguard","BackendData":{"PublicKey":%q,"Port":51820},"BackendV6Data":{"PublicKey":%q,"Port":51821}}`, pub, pub6, key, key)
	}
	f.Store.Leases[0].Value = wg("192.0.2.1", "2001:db8::1", wgKey1)
	f.Store.Leases[1].Value = wg("192.0.2.2", "2001:db8::2", wgKey2)
	f.SubnetFile.Env.MTU = 1420
	n := &f.Node
	n.Links = n.Links[:len(n.Links)-1] // flannel-v6.1
	for i := range n.Links {
		switch n.Links[i].Name {
		case "flannel.1":
			n.Links[i] = Link{Name: "flannel-wg", Index: devIdx, Kind: "tuntap", MTU: 1420, Up: true, Addrs: []netip.Prefix{pfx("10.244.1.0/32")}}
		case "cni0":
			n.Links[i].MTU = 1420
		}
	}
	n.Routes = []netlinkx.Route{
		{Dst: pfx("192.0.2.0/24"), LinkIndex: ulIdx},
		{Dst: pfx("10.244.1.0/24"), LinkIndex: brIdx},
		{Dst: pfx("10.244.0.0/16"), LinkIndex: devIdx},
	}
	n.Neighs, n.FDB = nil, nil
	delete(n.Sysctls, "net/ipv4/conf/flannel.1/rp_filter")
	n.Sysctls["net/ipv4/conf/flannel-wg/rp_filter"] = "0"
	delete(n.Sysctls, "net/ipv6/conf/flannel-v6.1/accept_ra")
	dev6, addr6 := "flannel-wg-v6", []netip.Prefix{pfx("fd00:10:244:1::/128"), pfx("fe80::2/64")}
	if mode != "" && mode != "separate" {
		// One device for both families.
		dev6 = ""
		n.Links[len(n.Links)-2].Addrs = append(n.Links[len(n.Links)-2].Addrs, addr6...)
	}
	idx6 := devIdx
	if dev6 != "" {
		idx6 = dev6Idx
		n.Links = append(n.Links, Link{Name: dev6, Index: dev6Idx, Kind: "tuntap", MTU: 1420, Up: true, Addrs: addr6})
	}
	n.IPv6.Routes = []netlinkx.Route{
		{Dst: pfx("2001:db8::/64"), LinkIndex: ulIdx},
		{Dst: pfx("fd00:10:244:1::/128"), LinkIndex: idx6},
		{Dst: pfx("fd00:10:244:1::/64"), LinkIndex: brIdx},
		{Dst: pfx("fd00:10:244::/56"), LinkIndex: idx6},
	}
	n.IPv6.Neighs, n.IPv6.FDB = nil, nil
	return f
}

func TestWireGuardIPv6Checks(t *testing.T) {
	for _, mode := range []string{"", "auto"} {
		r := Evaluate(healthyWGDual(mode))
		for _, x := range r.Results {
			if x.Status != OK && x.Status != Skip {
				t.Errorf("mode %q: healthy dual-stack wireguard: %s is %s: %s %v", mode, x.Check, x.Status, x.Message, x.Details)
			}
		}
		dev6 := map[string]string{"": "flannel-wg-v6", "auto": "flannel-wg"}[mode]
		for check, want := range map[string]string{
			"device-v6": dev6 + " up, fd00:10:244:1::/128, MTU 1420 (eth0 1500 − 80), userspace",
			"routes-v6": "fd00:10:244::/56 dev " + dev6,
			"device":    "flannel-wg up, 10.244.1.0/32, MTU 1420",
		} {
			if x, ok := find(r, check); !ok || x.Status != OK || !strings.Contains(x.Message, want) {
				t.Errorf("mode %q: %s = %+v, want ok with %q", mode, check, x, want)
			}
		}
		for _, c := range []string{"neighbours-v6", "fdb-v6"} {
			if _, ok := find(r, c); ok {
				t.Errorf("mode %q: wireguard has no %s", mode, c)
			}
		}
	}

	runEvalCases(t, func() Facts { return healthyWGDual("") }, []evalCase{
		{name: "v6 device missing", mutate: func(f *Facts) { f.Node.Links = f.Node.Links[:len(f.Node.Links)-1] }, check: "device-v6", status: Fail, want: []string{"flannel-wg-v6 not found"}},
		{name: "v6 address missing", mutate: func(f *Facts) { f.Node.Links[len(f.Node.Links)-1].Addrs = nil }, check: "device-v6", status: Fail, want: []string{"lacks address fd00:10:244:1::/128"}},
		{name: "v6 MTU", mutate: func(f *Facts) { f.Node.Links[len(f.Node.Links)-1].MTU = 1500 }, check: "device-v6", status: Fail, want: []string{"MTU 1500 exceeds 1420 (eth0 1500 − 80)"}},
		{name: "v6 route missing", mutate: func(f *Facts) { f.Node.IPv6.Routes = f.Node.IPv6.Routes[:3] }, check: "routes-v6", status: Fail, want: []string{"missing route fd00:10:244::/56 dev flannel-wg-v6"}},
		{name: "v6 route on the other device", mutate: func(f *Facts) { f.Node.IPv6.Routes[3].LinkIndex = devIdx }, check: "routes-v6", status: Fail, want: []string{"missing route fd00:10:244::/56 dev flannel-wg-v6"}},
	})
}
