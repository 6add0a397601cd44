package doctor

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/backend/hostgw"
	"github.com/weft-net/weft/internal/backend/vxlan"
	"github.com/weft-net/weft/internal/backend/wireguard"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/masq"
	"github.com/weft-net/weft/internal/netlinkx"
)

// vxlanOverhead6 is VXLAN over IPv6: the outer header is 20 bytes longer.
const vxlanOverhead6 = vxlanOverhead + 20

// ipv6 checks the IPv6 half of the datapath when the config enables IPv6:
// flannel-v6.<VNI> (vxlan), the IPv6 routes (and neighbours and FDB),
// IPv6 forwarding and the IPv6 masquerade rules. The rules are the
// backends' own (their planners), over the leases' IPv6 halves.
func (e *eval) ipv6() {
	if e.net == nil || !e.net.EnableIPv6 {
		return
	}
	f := e.f.Node.IPv6
	if f == nil {
		e.add("ipv6", Skip, "IPv6 datapath not read", "")
		return
	}
	switch e.net.Backend.Type {
	case config.BackendVXLAN, config.BackendHostGW, config.BackendWireGuard:
	default:
		e.add("ipv6", Fail, fmt.Sprintf("EnableIPv6 with backend %s, which carries IPv4 only", e.net.Backend.Type),
			"use vxlan, host-gw or wireguard for IPv6")
		return
	}
	dev6 := e.device6()
	e.routes6(f, dev6)
	e.forwarding6()
	e.masquerade6(f)
}

// pubIP6 is this node's PublicIPv6: the underlay's, else its lease's.
func (e *eval) pubIP6() netip.Addr {
	if n := e.f.Node; n.ExtErr == nil && n.Ext.PublicIPv6.IsValid() {
		return n.Ext.PublicIPv6
	}
	for _, l := range e.leases {
		if e.own6.IsValid() && l.IPv6Subnet == e.own6 && l.Attrs.PublicIPv6 != nil {
			return *l.Attrs.PublicIPv6
		}
	}
	return netip.Addr{}
}

func (e *eval) device6() *Link {
	name := DeviceNameV6(e.net)
	if name == "" {
		return nil // host-gw: routes go via the underlay
	}
	if e.f.Node.LinksErr != nil {
		e.add("device-v6", Fail, fmt.Sprintf("listing links: %v", e.f.Node.LinksErr), "run doctor as root")
		return nil
	}
	d := e.link(name)
	if d == nil {
		e.add("device-v6", Fail, name+" not found",
			"weftd creates it at start and re-creates it on its next resync: is weftd running? see its log")
		return nil
	}
	var problems []string
	status := OK
	if !d.Up {
		problems = append(problems, "is down")
		status = Fail
	}
	if e.own6.IsValid() {
		want := netip.PrefixFrom(lease.SubnetIP(e.own6), 128)
		if !slices.Contains(d.Addrs, want) {
			problems = append(problems, fmt.Sprintf("lacks address %s (has %s)", want, prefixes(globalIPv6(d.Addrs))))
			status = Fail
		}
	}
	wg := e.net.Backend.Type == config.BackendWireGuard
	wantMTU, why := e.net.Backend.MTU, ""
	switch {
	case wg:
		// As flannel: MTU (else the underlay's) less 80, for every device.
		if wantMTU == 0 {
			wantMTU, why = e.ulMTU, fmt.Sprintf("%s %d − %d", e.ulName, e.ulMTU, wireguard.Overhead)
		} else {
			why = fmt.Sprintf("Backend.MTU %d − %d", wantMTU, wireguard.Overhead)
		}
		if wantMTU > 0 {
			wantMTU -= wireguard.Overhead
		}
	case e.ulMTU > 0:
		// As weftd sets it: the pods' MTU, at most what VXLAN over IPv6
		// leaves of the underlay's.
		if wantMTU == 0 {
			wantMTU = e.ulMTU - vxlanOverhead
		}
		wantMTU = min(wantMTU, e.ulMTU-vxlanOverhead6)
		why = fmt.Sprintf("%s %d − %d", e.ulName, e.ulMTU, vxlanOverhead6)
	}
	if wantMTU > 0 && d.MTU != wantMTU {
		problems = append(problems, fmt.Sprintf("MTU %d, want %d (%s)", d.MTU, wantMTU, why))
		status = max(status, Warn)
	}
	// flannel sets accept_ra=0 on its VXLAN devices only.
	if v, ok := e.f.Node.Sysctls["net/ipv6/conf/"+name+"/accept_ra"]; ok && v != "0" && !wg {
		problems = append(problems, "accept_ra = "+v+": router advertisements may add addresses and routes to it")
		status = max(status, Warn)
	}
	if len(problems) > 0 {
		e.add("device-v6", status, name+" "+strings.Join(problems, "; "),
			"weftd repairs its device on every resync (--resync-period): if this stays, see weftd's log")
		return d
	}
	if wg {
		e.add("device-v6", OK, fmt.Sprintf("%s up, %s, MTU %d (%s), %s", name, prefixes(globalIPv6(d.Addrs)), d.MTU, why, wgImpl(d)), "")
		return d
	}
	e.add("device-v6", OK, fmt.Sprintf("%s up, %s, MTU %d, accept_ra 0", name, prefixes(globalIPv6(d.Addrs)), d.MTU), "")
	return d
}

func globalIPv6(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is6() && !p.Addr().IsLinkLocalUnicast() {
			out = append(out, p)
		}
	}
	return out
}

func (e *eval) routes6(f *IPv6Facts, dev6 *Link) {
	typ := e.net.Backend.Type
	switch {
	case !e.own6.IsValid():
		e.add("routes-v6", Skip, "this node's IPv6 subnet is unknown: see subnet-file (FLANNEL_IPV6_SUBNET)", "")
		return
	case !e.leasesOK:
		e.add("routes-v6", Skip, "leases not available: see store", "")
		return
	case f.RoutesErr != nil:
		e.add("routes-v6", Fail, fmt.Sprintf("listing IPv6 routes: %v", f.RoutesErr), "run doctor as root")
		return
	case typ != config.BackendHostGW && dev6 == nil:
		e.add("routes-v6", Skip, "no IPv6 device: see device-v6", "")
		return
	case e.ulIndex == 0:
		e.add("routes-v6", Skip, "no underlay: see underlay", "")
		return
	}
	network := e.net.IPv6Network
	if typ == config.BackendWireGuard {
		// One route to the whole network; the peers live in the
		// device's table (AllowedIPs).
		e.programChecked6 = true
		for _, r := range f.Routes {
			if r.LinkIndex == dev6.Index && r.Dst == network.Masked() && !r.Gw.IsValid() {
				e.add("routes-v6", OK, fmt.Sprintf("%s dev %s (wireguard routes the whole IPv6 network into its device)", r.Dst, dev6.Name), "")
				return
			}
		}
		e.noteOf(network, "route to the network")
		e.add("routes-v6", Fail, fmt.Sprintf("missing route %s dev %s", network.Masked(), dev6.Name),
			"weftd adds it on its next resync: is weftd running? see its log")
		return
	}
	own := e.own6
	owned := func(r netlinkx.Route) bool { return backend.Manages(network, own, r.Dst) && !own.Overlaps(r.Dst) }
	on := func(idx ...int) []netlinkx.Route {
		var out []netlinkx.Route
		for _, r := range f.Routes {
			if slices.Contains(idx, r.LinkIndex) {
				out = append(out, r)
			}
		}
		return out
	}
	leases, skipped := e.admitted()
	var want, have []netlinkx.Route
	var vx vxlan.State
	if typ == config.BackendHostGW {
		var notProgrammable []*backend.LeaseError
		want, notProgrammable = hostgw.Desired(hostgw.Params{
			IPv6: true, Network: network, Own: own, PublicIP: e.pubIP6(),
			Underlay: e.ulIndex, UnderlayName: e.ulName, UnderlaySubnet: e.f.Node.Ext.Subnet6,
		}, leases)
		skipped = append(skipped, notProgrammable...)
		have = on(e.ulIndex)
	} else {
		p := vxlan.Params{
			IPv6: true, Network: network, Own: own, PublicIP: e.pubIP6(), VNI: e.net.Backend.VNI, Link: dev6.Index,
			DirectRouting: e.net.Backend.DirectRouting, Underlay: e.ulIndex, UnderlaySubnet: e.f.Node.Ext.Subnet6,
		}
		var notProgrammable []*backend.LeaseError
		vx, notProgrammable = vxlan.Desired(p, leases)
		skipped = append(skipped, notProgrammable...)
		want = vx.Routes
		if p.DirectRouting {
			have = on(dev6.Index, e.ulIndex)
		} else {
			have = on(dev6.Index)
		}
	}
	e.programChecked6 = true
	missing, wrong, extra := e.diffRoutes(have, want, owned)
	for _, s := range skipped {
		if s.Subnet.Addr().Is6() {
			extra = append(extra, "not programmed: "+s.Error())
		}
	}
	on6 := orUnknown(e.ulName)
	if dev6 != nil {
		on6 = dev6.Name
	}
	e.tableResult("routes-v6", on6, len(want), "IPv6 routes to remote subnets", missing, wrong, extra)
	if typ != config.BackendVXLAN {
		return
	}
	name := dev6.Name
	if f.NeighErr != nil {
		e.add("neighbours-v6", Fail, fmt.Sprintf("listing neighbours of %s: %v", name, f.NeighErr), "run doctor as root")
	} else {
		m, w, x := diffEntries(f.Neighs, vx.Neighs, netlinkx.Neigh.Key,
			func(n netlinkx.Neigh) bool { return network.Contains(n.IP) },
			func(n netlinkx.Neigh) string { return fmt.Sprintf("%s lladdr %s", n.IP, n.MAC) })
		e.tableResult("neighbours-v6", name, len(vx.Neighs), "permanent neighbour entries", m, w, x)
		put, _ := backend.Diff(f.Neighs, vx.Neighs, netlinkx.Neigh.Key, func(n netlinkx.Neigh) bool { return network.Contains(n.IP) })
		for _, x := range put {
			e.noteOf(netip.PrefixFrom(x.IP, 128), "neighbour entry")
		}
	}
	if f.FDBErr != nil {
		e.add("fdb-v6", Fail, fmt.Sprintf("listing the FDB of %s: %v", name, f.FDBErr), "run doctor as root")
		return
	}
	m, w, x := diffEntries(f.FDB, vx.FDB, netlinkx.FDB.Key, nil,
		func(x netlinkx.FDB) string { return fmt.Sprintf("%s dst %s", x.MAC, x.Dst) })
	e.tableResult("fdb-v6", name, len(vx.FDB), "FDB entries", m, w, x)
	put, _ := backend.Diff(f.FDB, vx.FDB, netlinkx.FDB.Key, nil)
	for _, x := range put {
		for _, l := range e.leases {
			if l.Attrs.PublicIPv6 != nil && *l.Attrs.PublicIPv6 == x.Dst && l.IPv6Subnet.IsValid() {
				e.noteOf(l.IPv6Subnet, "fdb entry")
			}
		}
	}
}

func (e *eval) forwarding6() {
	switch v, ok := e.f.Node.Sysctls["net/ipv6/conf/all/forwarding"]; {
	case !ok:
		e.add("ip6-forward", Warn, "cannot read /proc/sys/net/ipv6/conf/all/forwarding", "run doctor as root, in the node's network namespace")
	case v == "1":
		e.add("ip6-forward", OK, "net.ipv6.conf.all.forwarding = 1", "")
	default:
		e.add("ip6-forward", Fail, "net.ipv6.conf.all.forwarding = "+v+": this node drops the IPv6 pod traffic it should route",
			"sysctl -w net.ipv6.conf.all.forwarding=1, and persist it in /etc/sysctl.d/")
	}
}

// masquerade6 checks flannel's IPv6 masquerade rules: in ip6tables'
// WEFT-POSTRTG, or in the inet table with the IPv4 ones (nftables).
func (e *eval) masquerade6(f *IPv6Facts) {
	switch {
	case e.env == nil || !e.env.IPMasq:
		return // the IPv4 check says why there is nothing to check
	case !e.own6.IsValid():
		e.add("masquerade-v6", Skip, "this node's IPv6 subnet is unknown: see subnet-file", "")
		return
	}
	network := e.net.IPv6Network
	hint := "weftd --ip-masq installs them within --iptables-resync (5 s): is weftd running with --ip-masq?"
	if e.net.EnableNFTables {
		m := e.f.Node.Masq
		if !m.Checked || m.Err != nil || !m.TableExists {
			e.add("masquerade-v6", Skip, "table inet "+masq.NFTTable+" not read: see masquerade", "")
			return
		}
		post, _ := masq.NFTRules(masq.Config{IPv6Network: network, IPv6Subnet: e.own6, Masquerade: true, NoFullyRandom: e.f.Options.IPMasqFullyRandomDisable})
		var missing []string
		for _, r := range post {
			if !slices.Contains(m.Comments, r.Comment) {
				missing = append(missing, r.Rule)
			}
		}
		if len(missing) > 0 {
			e.add("masquerade-v6", Fail, fmt.Sprintf("table inet %s lacks %s for %s", masq.NFTTable, plural(len(missing), "rule", "rules"), network), hint, firstN(missing)...)
			return
		}
		e.add("masquerade-v6", OK, fmt.Sprintf("table inet %s: the IPv6 postrouting rules for %s", masq.NFTTable, network), "")
		return
	}
	m := f.Masq
	switch {
	case !m.Checked:
		e.add("masquerade-v6", Skip, "ip6tables rules not read", "")
		return
	case m.Err != nil:
		e.add("masquerade-v6", Fail, fmt.Sprintf("listing ip6tables rules: %v", m.Err), "is ip6tables installed? run doctor as root")
		return
	case !m.ChainExists:
		e.add("masquerade-v6", Fail, "FLANNEL_IPMASQ=true but ip6tables' nat chain "+masq.ChainPostrouting+" is missing", hint)
		return
	case !m.Jump:
		e.add("masquerade-v6", Fail, "ip6tables' POSTROUTING does not jump to "+masq.ChainPostrouting+": its rules never run", hint)
		return
	}
	have := map[string]bool{}
	for _, r := range m.Rules {
		have[normRule(r)] = true
	}
	bestMissing := missingMasqRules(have, network, e.own6)
	if len(bestMissing) > 0 {
		e.add("masquerade-v6", Fail, fmt.Sprintf("ip6tables' %s lacks %s for %s", masq.ChainPostrouting, plural(len(bestMissing), "rule", "rules"), network), hint, firstN(bestMissing)...)
		return
	}
	e.add("masquerade-v6", OK, fmt.Sprintf("ip6tables' %s: flannel's rules for %s, jumped to from POSTROUTING", masq.ChainPostrouting, network), "")
}
