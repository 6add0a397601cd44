package doctor

import (
	"fmt"
	"net/netip"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/masq"
)

// vxlanOverhead6 is VXLAN over IPv6: the outer header is 20 bytes longer.
const vxlanOverhead6 = vxlanOverhead + 20

// ipv6 checks the IPv6 half of the datapath when the config enables IPv6:
// the IPv4 checks (device, routes, neighbours and FDB, forwarding,
// masquerade) over the IPv6 family, as device-v6, routes-v6 and so on.
// The rules are the backends' own (their planners), over the leases' IPv6
// halves.
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
	fm := e.family6(f)
	e.device(fm)
	e.routes(fm)
	e.ipForward("ip6-forward", "net/ipv6/conf/all/forwarding", fm.ip())
	e.masquerade6(f)
}

// family6 is the IPv6 family: the backend's IPv6 device (DeviceNameV6;
// host-gw has none) and the IPv6 routes, neighbours and FDB in f.
func (e *eval) family6(f *IPv6Facts) *family {
	fm := &family{
		v6: true, suffix: "-v6",
		network: e.net.IPv6Network, own: e.own6, pubIP: e.pubIP6(), ulNet: e.f.Node.Ext.Subnet6, devName: DeviceNameV6(e.net),
		routes: f.Routes, routesErr: f.RoutesErr, neighs: f.Neighs, neighErr: f.NeighErr, fdb: f.FDB, fdbErr: f.FDBErr,
	}
	if fm.devName != "" {
		fm.dev = e.link(fm.devName)
	}
	return fm
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

func globalIPv6(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is6() && !p.Addr().IsLinkLocalUnicast() {
			out = append(out, p)
		}
	}
	return out
}

// masquerade6 checks flannel's IPv6 masquerade rules: in ip6tables'
// WEFT-POSTRTG, or in the inet table with the IPv4 ones (nftables). What
// the IPv4 check already reports of the rules' listing is skipped here.
func (e *eval) masquerade6(f *IPv6Facts) {
	switch {
	case e.env == nil || !e.env.IPMasq:
		return // the IPv4 check says why there is nothing to check
	case !e.own6.IsValid():
		e.add("masquerade-v6", Skip, "this node's IPv6 subnet is unknown: see subnet-file", "")
		return
	}
	network := e.net.IPv6Network
	if e.net.EnableNFTables {
		m := e.f.Node.Masq
		if !m.Checked || m.Err != nil || !m.TableExists {
			e.add("masquerade-v6", Skip, "table inet "+masq.NFTTable+" not read: see masquerade", "")
			return
		}
		e.nftMasq("masquerade-v6", "IPv6 ", m, masq.Config{IPv6Network: network, IPv6Subnet: e.own6, Masquerade: true, NoFullyRandom: e.f.Options.IPMasqFullyRandomDisable}, network)
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
	}
	e.iptablesMasq("masquerade-v6", "ip6tables' ", m, network, e.own6)
}
