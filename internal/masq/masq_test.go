package masq

import (
	"net/netip"
	"strings"
	"testing"
)

var (
	network = netip.MustParsePrefix("10.244.0.0/16")
	subnet  = netip.MustParsePrefix("10.244.1.0/24")
)

func TestIPTablesRules(t *testing.T) {
	masq, fwd := IPTablesRules(network, subnet, true)
	got := strings.Join(wantListing(masq), "\n") + "\n" + strings.Join(wantListing(fwd), "\n")
	want := `-N WEFT-POSTRTG
-A WEFT-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "weft masq" -j RETURN
-A WEFT-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "weft masq" -j RETURN
-A WEFT-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "weft masq" -j RETURN
-A WEFT-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "weft masq" -j RETURN
-A WEFT-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "weft masq" -j MASQUERADE --random-fully
-A WEFT-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "weft masq" -j MASQUERADE --random-fully
-N WEFT-FWD
-A WEFT-FWD -s 10.244.0.0/16 -m comment --comment "weft forward" -j ACCEPT
-A WEFT-FWD -d 10.244.0.0/16 -m comment --comment "weft forward" -j ACCEPT`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if masq.Parent != "POSTROUTING" || fwd.Parent != "FORWARD" || masq.Table != "nat" || fwd.Table != "filter" {
		t.Errorf("parents: %s/%s %s/%s", masq.Table, masq.Parent, fwd.Table, fwd.Parent)
	}

	masq, _ = IPTablesRules(network, subnet, false)
	if last := masq.Rules[len(masq.Rules)-1].String(); strings.Contains(last, "random-fully") {
		t.Errorf("without --random-fully support: %s", last)
	}
	masq6, _ := IPTablesRules(netip.MustParsePrefix("fd00:10::/56"), netip.MustParsePrefix("fd00:10:0:1::/64"), false)
	if r := masq6.Rules[4].String(); r != `-A WEFT-POSTRTG -s fd00:10::/56 ! -d ff00::/8 -m comment --comment "weft masq" -j MASQUERADE` {
		t.Errorf("IPv6 multicast exclusion: %s", r)
	}
}

func TestNFTRules(t *testing.T) {
	post, fwd := NFTRules(Config{
		Network: network, Subnet: subnet,
		IPv6Network: netip.MustParsePrefix("fd00:10::/56"), IPv6Subnet: netip.MustParsePrefix("fd00:10:0:1::/64"),
		Masquerade: true, Forward: true,
	})
	var b strings.Builder
	seen := map[string]bool{}
	for _, r := range append(post, fwd...) {
		if seen[r.Comment] {
			t.Errorf("comment %q not unique", r.Comment)
		}
		seen[r.Comment] = true
		b.WriteString(r.Rule + "\n")
	}
	want := `meta mark & 0x4000 == 0x4000 return
ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return
ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return
ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
ip6 saddr fd00:10:0:1::/64 ip6 daddr fd00:10::/56 return
ip6 saddr fd00:10::/56 ip6 daddr fd00:10:0:1::/64 return
ip6 saddr != fd00:10::/56 ip6 daddr fd00:10:0:1::/64 return
ip6 saddr fd00:10::/56 ip6 daddr != ff00::/8 masquerade fully-random
ip6 saddr != fd00:10::/56 ip6 daddr fd00:10::/56 masquerade fully-random
ip saddr 10.244.0.0/16 accept
ip daddr 10.244.0.0/16 accept
ip6 saddr fd00:10::/56 accept
ip6 daddr fd00:10::/56 accept
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}

	post, _ = NFTRules(Config{Network: network, Subnet: subnet, Masquerade: true, NoFullyRandom: true})
	for _, r := range post {
		if strings.Contains(r.Rule, "fully-random") || seen[r.Comment] && strings.Contains(r.Rule, "masquerade") {
			t.Errorf("NoFullyRandom: %q (%q)", r.Rule, r.Comment)
		}
	}
	if got := post[len(post)-1].Rule; got != "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade" {
		t.Errorf("NoFullyRandom: last rule %q", got)
	}

	post, fwd = NFTRules(Config{Network: network, Subnet: subnet, Forward: true})
	if len(post) != 0 || len(fwd) != 2 {
		t.Errorf("forward only: %d postrouting rules, %d forward rules", len(post), len(fwd))
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{Network: network}).Validate(); err == nil {
		t.Error("network without subnet accepted")
	}
	if err := (Config{Network: network, Subnet: subnet}).Validate(); err != nil {
		t.Error(err)
	}
}
