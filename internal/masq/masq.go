// Package masq keeps the masquerade and forward rules that --ip-masq and
// flannel's default forward rules ask for:
//
//   - pod network -> pod network: untouched;
//   - a foreign source -> this node's pod subnet: untouched (the sender owns
//     the reply path);
//   - pod network -> outside (multicast excepted): masqueraded, with
//     --random-fully / fully-random where the tools support it, unless
//     --ip-masq-fully-random-disable;
//   - host -> pod network: masqueraded, so that remote nodes see an address
//     they route back;
//   - FORWARD accepts traffic from and to the pod network.
//
// The rules live in chains named for the project (WEFT-POSTRTG and WEFT-FWD
// for iptables, table "weft" for nftables), are rewritten only when they
// differ from what is wanted, and are re-checked periodically (Keeper).
//
// Rule generation here is pure; the iptables and nftables appliers are in
// the _linux.go files.
package masq

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"
)

// Chain names.
const (
	ChainPostrouting = "WEFT-POSTRTG" // iptables nat table
	ChainForward     = "WEFT-FWD"     // iptables filter table
	NFTTable         = "weft"         // nftables table (family inet)
	nftPostrouting   = "postrouting"
	nftForward       = "forward"
)

// kubeProxyMark is kube-proxy's masquerade mark. Packets carrying it are
// left to kube-proxy, which masquerades them itself; doing it twice hit a
// kernel bug (flannel does the same).
const kubeProxyMark = "0x4000/0x4000"

const (
	commentMasq    = "weft masq"
	commentForward = "weft forward"
)

// Config is the desired state. An invalid Network leaves that family alone.
type Config struct {
	Network     netip.Prefix // cluster IPv4 network
	Subnet      netip.Prefix // this node's IPv4 subnet
	IPv6Network netip.Prefix // cluster IPv6 network
	IPv6Subnet  netip.Prefix // this node's IPv6 subnet
	// Masquerade is --ip-masq.
	Masquerade bool
	// NoFullyRandom is --ip-masq-fully-random-disable: masquerade without
	// --random-fully (iptables) or fully-random (nftables).
	NoFullyRandom bool
	// Forward accepts forwarded traffic from and to the cluster network.
	Forward bool
}

func (c Config) String() string {
	var parts []string
	for _, f := range []struct {
		name string
		p    netip.Prefix
	}{{"network", c.Network}, {"subnet", c.Subnet}, {"ipv6_network", c.IPv6Network}, {"ipv6_subnet", c.IPv6Subnet}} {
		if f.p.IsValid() {
			parts = append(parts, f.name+"="+f.p.String())
		}
	}
	parts = append(parts, fmt.Sprintf("masquerade=%v forward=%v", c.Masquerade, c.Forward))
	if c.Masquerade && c.NoFullyRandom {
		parts = append(parts, "fully_random=false")
	}
	return strings.Join(parts, " ")
}

// Validate checks that each family that is enabled has both prefixes.
func (c Config) Validate() error {
	if c.Network.IsValid() != c.Subnet.IsValid() {
		return fmt.Errorf("masq: IPv4 network %s and subnet %s must both be set", c.Network, c.Subnet)
	}
	if c.IPv6Network.IsValid() != c.IPv6Subnet.IsValid() {
		return fmt.Errorf("masq: IPv6 network %s and subnet %s must both be set", c.IPv6Network, c.IPv6Subnet)
	}
	return nil
}

// Manager converges one firewall implementation to a Config.
type Manager interface {
	// Ensure makes the kernel hold exactly the rules c asks for, repairing
	// anything changed behind its back, and reports whether it changed
	// anything. Idempotent; rules of a disabled kind are removed.
	Ensure(ctx context.Context, c Config) (changed bool, err error)
}

// Rule is one iptables rule: -A Chain Spec... in Table.
type Rule struct {
	Table string
	Chain string
	Spec  []string
}

// String renders the rule as `iptables -S` lists it.
func (r Rule) String() string {
	parts := make([]string, 0, len(r.Spec)+2)
	parts = append(parts, "-A", r.Chain)
	for _, s := range r.Spec {
		if strings.ContainsAny(s, " \t") {
			s = `"` + s + `"`
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

// ChainRules is a project chain with the jump that sends traffic to it.
type ChainRules struct {
	Table  string
	Chain  string
	Parent string   // built-in chain holding the jump
	Jump   []string // rule spec of the jump, inserted first in Parent
	Rules  []Rule
}

// iptablesChains are the two project chains without their rules.
func iptablesChains() (masq, fwd ChainRules) {
	masq = ChainRules{
		Table: "nat", Chain: ChainPostrouting, Parent: "POSTROUTING",
		Jump: []string{"-m", "comment", "--comment", commentMasq, "-j", ChainPostrouting},
	}
	fwd = ChainRules{
		Table: "filter", Chain: ChainForward, Parent: "FORWARD",
		Jump: []string{"-m", "comment", "--comment", commentForward, "-j", ChainForward},
	}
	return masq, fwd
}

// IPTablesRules returns the chains for one family. network and subnet are
// of that family; randomFully says whether iptables knows --random-fully.
func IPTablesRules(network, subnet netip.Prefix, randomFully bool) (masq, fwd ChainRules) {
	cluster, pod := network.String(), subnet.String()
	multicast := "224.0.0.0/4"
	if network.Addr().Is6() {
		multicast = "ff00::/8"
	}
	masqTarget := []string{"-j", "MASQUERADE"}
	if randomFully {
		masqTarget = append(masqTarget, "--random-fully")
	}
	masq, fwd = iptablesChains()
	// -s before -d and matches before the target: the order iptables
	// lists them in.
	cm := []string{"-m", "comment", "--comment", commentMasq}
	for _, spec := range [][]string{
		concat([]string{"-m", "mark", "--mark", kubeProxyMark}, cm, []string{"-j", "RETURN"}),
		concat([]string{"-s", pod, "-d", cluster}, cm, []string{"-j", "RETURN"}),
		concat([]string{"-s", cluster, "-d", pod}, cm, []string{"-j", "RETURN"}),
		concat([]string{"!", "-s", cluster, "-d", pod}, cm, []string{"-j", "RETURN"}),
		concat([]string{"-s", cluster, "!", "-d", multicast}, cm, masqTarget),
		concat([]string{"!", "-s", cluster, "-d", cluster}, cm, masqTarget),
	} {
		masq.Rules = append(masq.Rules, Rule{Table: masq.Table, Chain: masq.Chain, Spec: spec})
	}
	cf := []string{"-m", "comment", "--comment", commentForward}
	for _, spec := range [][]string{
		concat([]string{"-s", cluster}, cf, []string{"-j", "ACCEPT"}),
		concat([]string{"-d", cluster}, cf, []string{"-j", "ACCEPT"}),
	} {
		fwd.Rules = append(fwd.Rules, Rule{Table: fwd.Table, Chain: fwd.Chain, Spec: spec})
	}
	return masq, fwd
}

func concat(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// NFTRule is one nftables rule. Comments are unique within a chain and
// name the rule's content, so that comparing the comments the kernel lists
// with the wanted ones tells whether the chain is as wanted (nft's JSON
// listing does not round-trip rule text).
type NFTRule struct {
	Rule    string
	Comment string
}

// NFTRules returns the rules of the two nftables chains (table inet weft)
// for c. A family whose network is invalid gets no rules.
//
// flannel keeps them in two tables, ip flannel-ipv4 and ip6
// flannel-ipv6; one inet table holds both families here, so that one
// transaction replaces them together. Two of flannel's nftables rules are
// deliberately not copied; the iptables form is, so that a node moving
// between iptables and nftables treats every packet the same:
//   - the mark is matched under a mask, as iptables' --mark 0x4000/0x4000:
//     flannel's exact "meta mark 0x4000" misses kube-proxy's bit whenever
//     another component has set a bit of its own;
//   - the third return is "saddr != CLUSTER daddr POD" (iptables' rule 5,
//     outside clients keep their address to our pods). flannel's nftables
//     "saddr != POD daddr CLUSTER" returns everything the host sends into
//     the cluster, so its last rule (host to cluster masquerade) can never
//     match.
func NFTRules(c Config) (postrouting, forward []NFTRule) {
	if c.Masquerade {
		postrouting = append(postrouting, NFTRule{
			Rule:    "meta mark & 0x4000 == 0x4000 return",
			Comment: "weft masq: kube-proxy marked",
		})
	}
	fams := []struct {
		kw, multicast   string
		network, subnet netip.Prefix
	}{
		{"ip", "224.0.0.0/4", c.Network, c.Subnet},
		{"ip6", "ff00::/8", c.IPv6Network, c.IPv6Subnet},
	}
	// The comment says which: the chain is compared by comments.
	masquerade, how := "masquerade fully-random", ""
	if c.NoFullyRandom {
		masquerade, how = "masquerade", " (not fully-random)"
	}
	for _, f := range fams {
		if !f.network.IsValid() {
			continue
		}
		cluster, pod := f.network.String(), f.subnet.String()
		if c.Masquerade {
			postrouting = append(postrouting,
				NFTRule{fmt.Sprintf("%s saddr %s %s daddr %s return", f.kw, pod, f.kw, cluster),
					fmt.Sprintf("weft masq: %s to %s return", pod, cluster)},
				NFTRule{fmt.Sprintf("%s saddr %s %s daddr %s return", f.kw, cluster, f.kw, pod),
					fmt.Sprintf("weft masq: %s to %s return", cluster, pod)},
				NFTRule{fmt.Sprintf("%s saddr != %s %s daddr %s return", f.kw, cluster, f.kw, pod),
					fmt.Sprintf("weft masq: not %s to %s return", cluster, pod)},
				NFTRule{fmt.Sprintf("%s saddr %s %s daddr != %s %s", f.kw, cluster, f.kw, f.multicast, masquerade),
					fmt.Sprintf("weft masq: %s to outside masquerade%s", cluster, how)},
				NFTRule{fmt.Sprintf("%s saddr != %s %s daddr %s %s", f.kw, cluster, f.kw, cluster, masquerade),
					fmt.Sprintf("weft masq: host to %s masquerade%s", cluster, how)},
			)
		}
		if c.Forward {
			forward = append(forward,
				NFTRule{fmt.Sprintf("%s saddr %s accept", f.kw, cluster), fmt.Sprintf("weft forward: from %s", cluster)},
				NFTRule{fmt.Sprintf("%s daddr %s accept", f.kw, cluster), fmt.Sprintf("weft forward: to %s", cluster)},
			)
		}
	}
	return postrouting, forward
}

// Keeper runs a Manager: Ensure at once, then every period, and at once
// again when the config changes.
type Keeper struct {
	m      Manager
	period time.Duration
	log    *slog.Logger
	set    chan Config
}

// NewKeeper returns a Keeper; Run starts it.
func NewKeeper(m Manager, period time.Duration, log *slog.Logger) *Keeper {
	return &Keeper{m: m, period: period, log: log, set: make(chan Config, 1)}
}

// Set hands the Keeper a new config. It never blocks; the latest wins.
func (k *Keeper) Set(c Config) {
	for {
		select {
		case k.set <- c:
			return
		default:
		}
		select {
		case <-k.set:
		default:
		}
	}
}

// Run keeps the rules until ctx ends. It waits for the first Set. Errors
// are logged and retried at the next period; rules are left in place on
// exit so that traffic keeps flowing across a restart.
func (k *Keeper) Run(ctx context.Context) {
	var c Config
	select {
	case c = <-k.set:
	case <-ctx.Done():
		return
	}
	t := time.NewTicker(k.period)
	defer t.Stop()
	first := true
	for {
		changed, err := k.m.Ensure(ctx, c)
		switch {
		case err != nil && ctx.Err() == nil:
			k.log.Error("masquerade rules: ensure failed; retrying", "err", err, "every", k.period)
		case changed && first:
			k.log.Info("masquerade rules installed", "config", c.String())
		case changed:
			k.log.Warn("masquerade rules were changed behind weftd's back; repaired", "config", c.String())
		}
		if err == nil {
			first = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case n := <-k.set:
			if n != c {
				first = true
			}
			c = n
		}
	}
}
