package doctor

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/backend/hostgw"
	"github.com/weft-net/weft/internal/backend/udp"
	"github.com/weft-net/weft/internal/backend/vxlan"
	"github.com/weft-net/weft/internal/backend/wireguard"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/admit"
	"github.com/weft-net/weft/internal/masq"
	"github.com/weft-net/weft/internal/netlinkx"
)

// DeviceName is the backend's device: flannel.<VNI> for vxlan, flannel0
// for udp, none for host-gw.
func DeviceName(n *config.Network) string {
	switch n.Backend.Type {
	case config.BackendVXLAN:
		vni := n.Backend.VNI
		if vni == 0 {
			vni = config.DefaultVNI
		}
		return "flannel." + strconv.Itoa(vni)
	case config.BackendUDP:
		return udp.DeviceName
	case config.BackendWireGuard:
		return wireguard.DeviceFor(n, false)
	}
	return ""
}

// DeviceNameV6 is the backend's IPv6 device: flannel-v6.<VNI> for vxlan
// with IPv6; for wireguard flannel-wg-v6 (mode separate) or flannel-wg
// (the single-device modes); none otherwise.
func DeviceNameV6(n *config.Network) string {
	if n.Backend.Type == config.BackendWireGuard {
		return wireguard.DeviceFor(n, true)
	}
	if n.Backend.Type != config.BackendVXLAN || !n.EnableIPv6 {
		return ""
	}
	vni := n.Backend.VNI
	if vni == 0 {
		vni = config.DefaultVNI
	}
	return "flannel-v6." + strconv.Itoa(vni)
}

func (e *eval) link(name string) *Link {
	for i := range e.f.Node.Links {
		if e.f.Node.Links[i].Name == name {
			return &e.f.Node.Links[i]
		}
	}
	return nil
}

func (e *eval) linkName(index int) string {
	for _, l := range e.f.Node.Links {
		if l.Index == index {
			return l.Name
		}
	}
	return "#" + strconv.Itoa(index)
}

func (e *eval) linkHolding(ip netip.Addr) *Link {
	for i, l := range e.f.Node.Links {
		for _, a := range l.Addrs {
			if a.Addr() == ip {
				return &e.f.Node.Links[i]
			}
		}
	}
	return nil
}

// ---- 3. subnet file ----

func (e *eval) subnetFile() {
	sf := e.f.SubnetFile
	if sf.Err == nil {
		env := sf.Env
		e.env = &env
		if env.Subnet.IsValid() {
			e.own = env.Subnet.Masked()
		}
		if env.IPv6Subnet.IsValid() {
			e.own6 = env.IPv6Subnet.Masked()
		}
	}
	e.underlay()
	if e.net != nil {
		if name := DeviceName(e.net); name != "" {
			e.dev = e.link(name)
		}
	}

	switch {
	case errors.Is(sf.Err, fs.ErrNotExist):
		e.add("subnet-file", Fail, sf.Path+" not found",
			"weftd writes it once it holds a lease: is weftd running, with this --subnet-file?")
	case sf.Err != nil:
		e.add("subnet-file", Fail, sf.Err.Error(), "weftd rewrites it at start: restart weftd")
	default:
		env := sf.Env
		var parts []string
		if env.Subnet.IsValid() {
			parts = append(parts, fmt.Sprintf("network %s, subnet %s", env.Network, env.Subnet))
		}
		if env.IPv6Subnet.IsValid() {
			parts = append(parts, fmt.Sprintf("IPv6 network %s, subnet %s", env.IPv6Network, env.IPv6Subnet))
		}
		msg := fmt.Sprintf("%s: %s, MTU %d, ipmasq %v", sf.Path, strings.Join(parts, ", "), env.MTU, env.IPMasq)
		switch {
		case e.net != nil && e.net.EnableIPv4 && env.Network != e.net.Network:
			e.add("subnet-file", Fail, fmt.Sprintf("%s: FLANNEL_NETWORK %s, but the config's network is %s", sf.Path, env.Network, e.net.Network),
				"the config changed under a running cluster: restart weftd to rewrite the file, then the pods")
		case e.net != nil && e.net.EnableIPv4 && !e.net.Network.Contains(env.Subnet.Addr()):
			e.add("subnet-file", Fail, fmt.Sprintf("%s: FLANNEL_SUBNET %s is outside the network %s", sf.Path, env.Subnet, e.net.Network),
				"restart weftd to acquire a subnet of the current network")
		case e.net != nil && e.net.EnableIPv6 && (env.IPv6Network != e.net.IPv6Network || !e.net.IPv6Network.Contains(env.IPv6Subnet.Addr())):
			e.add("subnet-file", Fail, fmt.Sprintf("%s: FLANNEL_IPV6_NETWORK %s, FLANNEL_IPV6_SUBNET %s, but the config's IPv6 network is %s", sf.Path, env.IPv6Network, env.IPv6Subnet, e.net.IPv6Network),
				"restart weftd to rewrite the file for the current config, then the pods")
		default:
			e.add("subnet-file", OK, msg, "")
		}
	}
	e.subnetLease()
	e.subnetMTU()
	e.subnetGSO()
}

// underlay finds this node's PublicIP and underlay interface: the one
// weftd's interface rules pick, or failing that (no --iface given and no
// default route, as in a lab) the interface holding the PublicIP of the
// lease the subnet file names.
func (e *eval) underlay() {
	n := e.f.Node
	if n.ExtErr == nil && n.Ext.Index > 0 {
		e.pubIP, e.ulName, e.ulIndex, e.ulMTU, e.ulNet = n.Ext.PublicIP, n.Ext.Name, n.Ext.Index, n.Ext.MTU, n.Ext.Subnet
		return
	}
	if !e.own.IsValid() {
		return
	}
	if l, ok := e.leaseFor(e.own); ok {
		if ln := e.linkHolding(l.Attrs.PublicIP); ln != nil {
			e.pubIP, e.ulName, e.ulIndex, e.ulMTU = l.Attrs.PublicIP, ln.Name, ln.Index, ln.MTU
			for _, a := range ln.Addrs {
				if a.Addr() == l.Attrs.PublicIP {
					e.ulNet = a.Masked()
				}
			}
		}
	}
}

func (e *eval) subnetLease() {
	switch {
	case e.env == nil || !e.own.IsValid():
		e.add("subnet-lease", Skip, "no subnet to look up: the subnet file is unusable", "")
		return
	case !e.leasesOK:
		e.add("subnet-lease", Skip, "leases not available: see store", "")
		return
	}
	l, ok := e.leaseFor(e.own)
	var mine []string
	if e.pubIP.IsValid() {
		for _, o := range e.leasesOf(e.pubIP) {
			if o.Subnet != e.own {
				mine = append(mine, o.Key())
			}
		}
	}
	switch {
	case !ok && len(mine) > 0:
		e.add("subnet-lease", Fail, fmt.Sprintf("no lease for %s, the subnet file's; this node (%s) holds %s", e.own, e.pubIP, strings.Join(mine, ", ")),
			"the subnet file is stale: restart weftd to rewrite it, then restart the pods (they have addresses of the old subnet)")
	case !ok:
		e.add("subnet-lease", Fail, fmt.Sprintf("no lease for %s in the store", e.own),
			"the lease expired or was deleted: weftd acquires one again on its next renewal; if it does not, its log says why")
	case e.pubIP.IsValid() && l.Attrs.PublicIP != e.pubIP:
		e.add("subnet-lease", Fail, fmt.Sprintf("lease %s names %s, not this node's %s", l.Key(), l.Attrs.PublicIP, e.pubIP),
			"two nodes claim one subnet (a cloned disk's subnet file?): delete this node's subnet file and restart its weftd")
	case !e.pubIP.IsValid():
		e.add("subnet-lease", Warn, fmt.Sprintf("lease %s names %s; this node's PublicIP is unknown (see underlay)", l.Key(), l.Attrs.PublicIP),
			"pass weftd's --iface / --public-ip to doctor")
	default:
		exp := "a reservation (no expiry)"
		if k := e.f.Kube; k != nil {
			exp = "published on Node " + k.NodeName
		} else if !l.Reservation() {
			exp = "expires in " + l.Expiration.Sub(e.f.Now).Round(time.Minute).String()
		}
		msg := fmt.Sprintf("lease %s names this node (%s), %s", l.Key(), l.Attrs.PublicIP, exp)
		if len(mine) > 0 {
			e.add("subnet-lease", Warn, msg+"; this node also holds "+strings.Join(mine, ", "),
				"a stale lease of this node wastes a subnet and confuses its peers: delete it with etcdctl del")
			return
		}
		e.add("subnet-lease", OK, msg, "")
	}
}

// podMTU is the MTU pods should have: the device's, or for host-gw the
// underlay's (Backend.MTU overriding).
func (e *eval) podMTU() (int, string) {
	if e.net != nil && e.net.Backend.Type == config.BackendHostGW {
		if e.net.Backend.MTU != 0 {
			return e.net.Backend.MTU, "Backend.MTU"
		}
		if e.ulIndex > 0 {
			return e.ulMTU, e.ulName
		}
		return 0, ""
	}
	if e.dev != nil {
		return e.dev.MTU, e.dev.Name
	}
	return 0, ""
}

func (e *eval) subnetMTU() {
	if e.env == nil {
		e.add("subnet-mtu", Skip, "no subnet file", "")
		return
	}
	want, of := e.podMTU()
	switch {
	case want == 0:
		e.add("subnet-mtu", Skip, fmt.Sprintf("FLANNEL_MTU %d not compared: the device is unknown", e.env.MTU), "")
	case e.env.MTU > want:
		msg, hint := fmt.Sprintf("FLANNEL_MTU %d exceeds %s's MTU %d: pods send packets the overlay drops", e.env.MTU, of, want),
			"restart weftd to rewrite the subnet file, then recreate the pods"
		if m, h := e.deviceMTUChanged(); m != "" {
			msg, hint = msg+"; "+m, h
		}
		e.add("subnet-mtu", Fail, msg, hint)
	case e.env.MTU < want:
		msg, hint := fmt.Sprintf("FLANNEL_MTU %d is below %s's MTU %d: works, but wastes bandwidth", e.env.MTU, of, want),
			"restart weftd to rewrite the subnet file"
		if m, h := e.deviceMTUChanged(); m != "" {
			msg, hint = msg+"; "+m, h
		}
		e.add("subnet-mtu", Warn, msg, hint)
	default:
		e.add("subnet-mtu", OK, fmt.Sprintf("FLANNEL_MTU %d = %s's MTU", e.env.MTU, of), "")
	}
}

// deviceMTUChanged says, when the subnet file has the MTU weftd gives its
// device but the device has another, that the device is what changed
// (ip link set by hand), and how to put it back; "" otherwise.
func (e *eval) deviceMTUChanged() (msg, hint string) {
	if e.dev == nil || e.net == nil || e.net.Backend.Type == config.BackendHostGW {
		return "", ""
	}
	want, why := e.deviceMTU(e.family4())
	if want == 0 || e.dev.MTU == want || e.env.MTU != want {
		return "", ""
	}
	return fmt.Sprintf("the subnet file is right: %s's MTU was changed from the %d weftd gives it (%s)", e.dev.Name, want, why),
		fmt.Sprintf("ip link set %s mtu %d (a running weftd resets it on its next resync; if it does not, see its log)", e.dev.Name, want)
}

// subnetGSO checks the GSO limit subnet.env gives pods: host-gw pods follow
// the underlay's when it is BIG TCP; tunnel pods keep the kernel's 64 KiB.
func (e *eval) subnetGSO() {
	if e.env == nil {
		e.add("subnet-gso", Skip, "no subnet file", "")
		return
	}
	if e.net == nil {
		e.add("subnet-gso", Skip, "backend unknown: no valid config", "")
		return
	}
	got, want, why := e.env.GSOIPv4MaxSize, 0, "BIG TCP does not cross the "+e.net.Backend.Type+" tunnel"
	if e.net.Backend.Type == config.BackendHostGW {
		ul := e.link(e.ulName)
		if ul == nil || ul.GSOIPv4MaxSize == 0 {
			e.add("subnet-gso", Skip, "the underlay's GSO limit is unknown", "")
			return
		}
		why = fmt.Sprintf("%s has no BIG TCP", ul.Name)
		if ul.GSOIPv4MaxSize > backend.LegacyGSOMaxSize {
			want, why = ul.GSOIPv4MaxSize, fmt.Sprintf("%s's gso_ipv4_max_size", ul.Name)
		}
	}
	rewrite := "restart weftd to rewrite the subnet file; pods added from then on get the new size"
	switch {
	case got == want && want == 0:
		e.add("subnet-gso", OK, "pods keep the kernel's 64 KiB GSO limit: "+why, "")
	case got == want:
		e.add("subnet-gso", OK, fmt.Sprintf("WEFT_GSO_IPV4_MAX_SIZE %d = %s: pods get BIG TCP", got, why), "")
	case got > want && e.net.Backend.Type != config.BackendHostGW:
		e.add("subnet-gso", Fail, fmt.Sprintf("WEFT_GSO_IPV4_MAX_SIZE %d, but %s: pods' large packets are cut short", got, why),
			"restart weftd to rewrite the subnet file, then recreate the pods")
	case got > want:
		e.add("subnet-gso", Warn, fmt.Sprintf("WEFT_GSO_IPV4_MAX_SIZE %d exceeds what %s takes (%d): the kernel splits pods' packets in software", got, e.ulName, max(want, backend.LegacyGSOMaxSize)), rewrite)
	default:
		e.add("subnet-gso", Warn, fmt.Sprintf("pods get %d-byte GSO packets, below %s (%d): BIG TCP unused", max(got, backend.LegacyGSOMaxSize), why, want), rewrite)
	}
}

// ---- 4. datapath ----

// family is one IP family's half of the datapath. The IPv6 checks are the
// IPv4 ones run over the IPv6 family (node6.go); what differs between the
// two is here.
type family struct {
	v6      bool
	suffix  string       // of the check names: "" or "-v6"
	network netip.Prefix // the config's network of the family
	own     netip.Prefix // this node's subnet of the family
	pubIP   netip.Addr   // this node's PublicIP of the family
	ulNet   netip.Prefix // the underlay's on-link prefix of the family
	devName string       // the backend's device of the family; "" when it has none
	dev     *Link        // that device, when found

	routes    []netlinkx.Route // the main table's routes of the family
	routesErr error
	neighs    []netlinkx.Neigh // the device's neighbours (vxlan)
	neighErr  error
	fdb       []netlinkx.FDB // the device's FDB (vxlan)
	fdbErr    error
}

// family4 is the IPv4 family; e.net is valid.
func (e *eval) family4() *family {
	n := &e.f.Node
	return &family{
		network: e.net.Network, own: e.own, pubIP: e.pubIP, ulNet: e.ulNet, devName: DeviceName(e.net), dev: e.dev,
		routes: n.Routes, routesErr: n.RoutesErr, neighs: n.Neighs, neighErr: n.NeighErr, fdb: n.FDB, fdbErr: n.FDBErr,
	}
}

// ip is what names the family in messages: "" for IPv4, "IPv6 ".
func (fm *family) ip() string {
	if fm.v6 {
		return "IPv6 "
	}
	return ""
}

// addrs are the device addresses of the family worth showing (IPv6 link-local ones are not).
func (fm *family) addrs(ps []netip.Prefix) []netip.Prefix {
	if fm.v6 {
		return globalIPv6(ps)
	}
	return ipv4(ps)
}

// subnetOf and pubIPOf are a lease's subnet and PublicIP of the family.
func (fm *family) subnetOf(l lease.Lease) netip.Prefix {
	if fm.v6 {
		return l.IPv6Subnet
	}
	return l.Subnet
}

func (fm *family) pubIPOf(l lease.Lease) netip.Addr {
	if !fm.v6 {
		return l.Attrs.PublicIP
	}
	if l.Attrs.PublicIPv6 != nil {
		return *l.Attrs.PublicIPv6
	}
	return netip.Addr{}
}

// underlayLine is the underlay as weftd chose it, with each family it has:
// "eth0 (MTU 1500, 192.0.2.0/24, 2001:db8::/64), public IP 192.0.2.2, public
// IPv6 2001:db8::2". An IPv6-only node has no IPv4 to show.
func (e *eval) underlayLine() string {
	var nets, ips []string
	if e.ulNet.IsValid() {
		nets = append(nets, e.ulNet.String())
	}
	if e.pubIP.IsValid() {
		ips = append(ips, "public IP "+e.pubIP.String())
	}
	if e.net != nil && e.net.EnableIPv6 {
		if p := e.f.Node.Ext.Subnet6; p.IsValid() {
			nets = append(nets, p.String())
		}
		if a := e.pubIP6(); a.IsValid() {
			ips = append(ips, "public IPv6 "+a.String())
		}
	}
	line := fmt.Sprintf("%s (MTU %d", e.ulName, e.ulMTU)
	for _, n := range nets {
		line += ", " + n
	}
	line += ")"
	if len(ips) > 0 {
		line += ", " + strings.Join(ips, ", ")
	}
	return line
}

func (e *eval) datapath() {
	n := e.f.Node
	switch {
	case n.ExtErr == nil && n.Ext.Index > 0:
		e.add("underlay", OK, e.underlayLine(), "")
	case e.ulIndex > 0:
		e.add("underlay", Warn, fmt.Sprintf("weftd's interface rules choose none (%v); took %s (MTU %d), which holds %s, the PublicIP of this node's lease", n.ExtErr, e.ulName, e.ulMTU, e.pubIP),
			"pass weftd's --iface / --iface-regex / --public-ip to doctor")
	default:
		e.add("underlay", Fail, fmt.Sprintf("no underlay interface: %v", n.ExtErr),
			"pass weftd's --iface / --iface-regex / --public-ip; without them weftd uses the default route's interface")
	}
	if e.net == nil {
		e.add("device", Skip, "backend unknown: no valid config", "")
		e.add("routes", Skip, "backend unknown: no valid config", "")
		return
	}
	if !e.net.EnableIPv4 {
		e.add("device", Skip, "IPv6-only network (EnableIPv4 false): see device-v6", "")
		e.add("routes", Skip, "IPv6-only network (EnableIPv4 false): see routes-v6", "")
		return
	}
	fm := e.family4()
	e.device(fm)
	e.routes(fm)
}

// device checks the backend's device of the family: up, this node's
// address, the MTU weftd gives it (and for flannel-v6.<VNI>, accept_ra
// off).
func (e *eval) device(fm *family) {
	check, name := "device"+fm.suffix, fm.devName
	if name == "" {
		if !fm.v6 { // one line says so for both families
			e.add(check, OK, fmt.Sprintf("%s uses no device: routes go via %s", e.net.Backend.Type, orUnknown(e.ulName)), "")
		}
		return
	}
	if e.f.Node.LinksErr != nil {
		e.add(check, Fail, fmt.Sprintf("listing links: %v", e.f.Node.LinksErr), "run doctor as root")
		return
	}
	d := fm.dev
	if d == nil {
		e.add(check, Fail, name+" not found",
			"weftd creates it at start and re-creates it on its next resync: is weftd running? see its log")
		return
	}
	var problems []string
	status := OK
	if !d.Up {
		problems = append(problems, "is down")
		status = Fail
	}
	if fm.own.IsValid() {
		want := netip.PrefixFrom(lease.SubnetIP(fm.own), fm.own.Addr().BitLen())
		if !slices.Contains(d.Addrs, want) {
			problems = append(problems, fmt.Sprintf("lacks address %s (has %s)", want, prefixes(fm.addrs(d.Addrs))))
			status = Fail
		}
	}
	wantMTU, why := e.deviceMTU(fm)
	hint := "weftd repairs its device on every resync (--resync-period): if this stays, see weftd's log"
	if wantMTU != 0 && d.MTU != wantMTU {
		hint = fmt.Sprintf("ip link set %s mtu %d, or let weftd repair it: it resets its device on every resync (--resync-period); if this stays, see weftd's log", name, wantMTU)
	}
	switch {
	case wantMTU == 0:
	case d.MTU > wantMTU:
		problems = append(problems, fmt.Sprintf("MTU %d exceeds %d (%s): encapsulated packets exceed the underlay", d.MTU, wantMTU, why))
		status = Fail
	case d.MTU < wantMTU:
		problems = append(problems, fmt.Sprintf("MTU %d is below %d (%s)", d.MTU, wantMTU, why))
		status = max(status, Warn)
	}
	// flannel sets accept_ra=0 on its VXLAN devices only.
	vxlan6 := fm.v6 && e.net.Backend.Type == config.BackendVXLAN
	if v, ok := e.f.Node.Sysctls["net/ipv6/conf/"+name+"/accept_ra"]; vxlan6 && ok && v != "0" {
		problems = append(problems, "accept_ra = "+v+": router advertisements may add addresses and routes to it")
		status = max(status, Warn)
	}
	if len(problems) > 0 {
		e.add(check, status, name+" "+strings.Join(problems, "; "), hint)
		return
	}
	mtu := fmt.Sprintf("MTU %d", d.MTU)
	if wantMTU != 0 {
		mtu += " (" + why + ")"
	}
	if e.net.Backend.Type == config.BackendWireGuard {
		mtu += ", " + wgImpl(d)
	}
	if vxlan6 {
		mtu += ", accept_ra 0"
	}
	e.add(check, OK, fmt.Sprintf("%s up, %s, %s", name, prefixes(fm.addrs(d.Addrs)), mtu), "")
}

// deviceMTU is the MTU weftd gives the family's device, and why: Backend.MTU
// (for wireguard, as flannel, less the overhead) or what the encapsulation
// leaves of the underlay's, for flannel-v6.<VNI> at most what VXLAN over
// IPv6 leaves; 0 when unknown.
func (e *eval) deviceMTU(fm *family) (int, string) {
	typ := e.net.Backend.Type
	overhead := vxlanOverhead
	switch typ {
	case config.BackendUDP:
		overhead = udpOverhead
	case config.BackendWireGuard:
		overhead = wireguard.Overhead
	}
	want, why := e.net.Backend.MTU, "Backend.MTU"
	if want > 0 && typ == config.BackendWireGuard {
		want, why = want-overhead, fmt.Sprintf("Backend.MTU %d − %d", want, overhead)
	}
	if want == 0 && e.ulMTU > 0 {
		want, why = e.ulMTU-overhead, fmt.Sprintf("%s %d − %d", e.ulName, e.ulMTU, overhead)
	}
	if fm.v6 && typ == config.BackendVXLAN && e.ulMTU > 0 && e.ulMTU-vxlanOverhead6 < want {
		want, why = e.ulMTU-vxlanOverhead6, fmt.Sprintf("%s %d − %d", e.ulName, e.ulMTU, vxlanOverhead6)
	}
	return want, why
}

// wgImpl names what runs WireGuard device d: the kernel's device, or a
// TUN that wireguard-go in weftd serves.
func wgImpl(d *Link) string {
	if d.Kind == "wireguard" {
		return wireguard.ImplKernel
	}
	return wireguard.ImplUserspace + " (wireguard-go in weftd)"
}

func orUnknown(s string) string {
	if s == "" {
		return "the underlay (unknown)"
	}
	return s
}

func ipv4(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is4() {
			out = append(out, p)
		}
	}
	return out
}

func prefixes(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "none"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

func (e *eval) routeString(r netlinkx.Route) string {
	s := r.Dst.String()
	if r.Gw.IsValid() {
		s += " via " + r.Gw.String()
	}
	s += " dev " + e.linkName(r.LinkIndex)
	if r.OnLink {
		s += " onlink"
	}
	if r.Priority != 0 {
		s += fmt.Sprintf(" metric %d", r.Priority)
	}
	return s
}

// routes compares the family's routes to remote subnets with what the
// backend's planner wants for the leases; for vxlan, the neighbours and
// FDB too.
func (e *eval) routes(fm *family) {
	typ := e.net.Backend.Type
	check := "routes" + fm.suffix
	switch {
	case !fm.own.IsValid():
		e.add(check, Skip, "this node's "+fm.ip()+"subnet is unknown: see subnet-file", "")
		return
	case !e.leasesOK && typ != config.BackendUDP:
		e.add(check, Skip, "leases not available: see store", "")
		return
	case fm.routesErr != nil:
		e.add(check, Fail, fmt.Sprintf("listing %sroutes: %v", fm.ip(), fm.routesErr), "run doctor as root")
		return
	case typ != config.BackendHostGW && fm.dev == nil:
		e.add(check, Skip, fmt.Sprintf("no %sdevice: see device%s", fm.ip(), fm.suffix), "")
		return
	case typ != config.BackendUDP && e.ulIndex == 0:
		e.add(check, Skip, "no underlay: see underlay", "")
		return
	}
	// weft status judges each family's half of the leases
	// (programChecked, programChecked6); the rp_filter check
	// (routeMissing) goes by the IPv4 routes.
	if fm.v6 {
		e.programChecked6 = true
	} else {
		e.programChecked = true
	}
	network, own := fm.network, fm.own
	owned := func(r netlinkx.Route) bool {
		// An IPv6 address puts its own route (the device's /128) in the
		// main table: the kernel's, not weftd's.
		return backend.Manages(network, own, r.Dst) && !(fm.v6 && own.Overlaps(r.Dst))
	}
	on := func(idx ...int) []netlinkx.Route {
		var out []netlinkx.Route
		for _, r := range fm.routes {
			if slices.Contains(idx, r.LinkIndex) {
				out = append(out, r)
			}
		}
		return out
	}

	var want, have []netlinkx.Route
	var vx vxlan.State
	leases, skipped := e.admitted()
	if fm.v6 {
		// Leases refused by their IPv4 subnet are the IPv4 check's.
		skipped = slices.DeleteFunc(skipped, func(s *backend.LeaseError) bool { return !s.Subnet.Addr().Is6() })
	}
	switch typ {
	case config.BackendUDP, config.BackendWireGuard:
		// One route to the whole network; the peers live in weftd's table
		// (udp) or the WireGuard device's (wireguard, AllowedIPs).
		r := netlinkx.Route{Dst: network.Masked(), LinkIndex: fm.dev.Index}
		for _, h := range on(fm.dev.Index) {
			if h.Dst == r.Dst && !h.Gw.IsValid() {
				e.add(check, OK, fmt.Sprintf("%s dev %s (%s routes the whole %snetwork into its device)", r.Dst, fm.dev.Name, typ, fm.ip()), "")
				return
			}
		}
		if !fm.v6 {
			e.routeMissing = 1
		}
		for _, l := range e.leases {
			if s := fm.subnetOf(l); s.IsValid() && s != own {
				e.noteLease(fm, l, "route to the network")
			}
		}
		e.add(check, Fail, fmt.Sprintf("missing route %s dev %s", r.Dst, fm.dev.Name),
			"weftd adds it on its next resync: is weftd running? see its log")
		return
	case config.BackendHostGW:
		var notProgrammable []*backend.LeaseError
		want, notProgrammable = hostgw.Desired(hostgw.Params{
			IPv6: fm.v6, Network: network, Own: own, PublicIP: fm.pubIP,
			Underlay: e.ulIndex, UnderlayName: e.ulName, UnderlaySubnet: fm.ulNet,
		}, leases)
		skipped = append(skipped, notProgrammable...)
		have = on(e.ulIndex)
	default:
		p := vxlan.Params{
			IPv6: fm.v6, Network: network, Own: own, PublicIP: fm.pubIP, VNI: e.net.Backend.VNI, Link: fm.dev.Index,
			DirectRouting: e.net.Backend.DirectRouting, Underlay: e.ulIndex, UnderlaySubnet: fm.ulNet,
		}
		var notProgrammable []*backend.LeaseError
		vx, notProgrammable = vxlan.Desired(p, leases)
		skipped = append(skipped, notProgrammable...)
		want = vx.Routes
		if p.DirectRouting {
			have = on(fm.dev.Index, e.ulIndex)
		} else {
			have = on(fm.dev.Index)
		}
	}
	missing, wrong, extra := e.diffRoutes(have, want, owned)
	if !fm.v6 {
		e.routeMissing = len(missing) + len(wrong)
	}
	for _, s := range skipped {
		for _, l := range e.leases {
			if fm.subnetOf(l) == s.Subnet {
				e.noteLease(fm, l, "programming (not programmable: "+s.Err.Error()+")")
			}
		}
	}
	var details []string
	details = append(details, prefixAll("missing: ", missing)...)
	details = append(details, prefixAll("differs: ", wrong)...)
	details = append(details, prefixAll("extra: ", extra)...)
	for _, s := range skipped {
		details = append(details, "not programmed: "+s.Error())
	}
	msg := fmt.Sprintf("%d of %d %sroutes to remote subnets present", len(want)-len(missing)-len(wrong), len(want), fm.ip())
	var problems []string
	if len(missing) > 0 {
		problems = append(problems, fmt.Sprintf("%d missing", len(missing)))
	}
	if len(wrong) > 0 {
		problems = append(problems, fmt.Sprintf("%d differ", len(wrong)))
	}
	if len(extra) > 0 {
		problems = append(problems, fmt.Sprintf("%d extra", len(extra)))
	}
	if len(skipped) > 0 {
		problems = append(problems, fmt.Sprintf("%d leases not programmable", len(skipped)))
	}
	if len(problems) > 0 {
		msg += ": " + strings.Join(problems, ", ")
	}
	switch {
	case len(missing)+len(wrong) > 0:
		e.add(check, Fail, msg, "weftd repairs routes on every resync (--resync-period): if they stay wrong, weftd is stopped or failing, see its log", firstN(details)...)
	case len(extra)+len(skipped) > 0:
		e.add(check, Warn, msg, "extra routes to the network are removed by a running weftd; unprogrammable leases name their reason", firstN(details)...)
	default:
		e.add(check, OK, msg, "")
	}
	if typ == config.BackendVXLAN {
		e.vxlanTables(fm, vx)
	}
}

// note records that this node lacks what of the lease holding subnet.
func (e *eval) note(subnet netip.Prefix, what string) {
	if old := e.missing[subnet]; old != "" {
		if strings.Contains(old, what) {
			return
		}
		what = old + ", " + what
	}
	e.missing[subnet] = what
}

// leaseKey is the subnet a lease is named by: its IPv4 one where it has one.
func leaseKey(l lease.Lease) netip.Prefix {
	if l.Subnet.IsValid() {
		return l.Subnet
	}
	return l.IPv6Subnet
}

// noteLease records that this node lacks what of lease l, in family fm.
func (e *eval) noteLease(fm *family, l lease.Lease, what string) {
	e.note(leaseKey(l), fm.ip()+what)
}

// noteOf notes what missing for the remote lease whose subnet holds dst
// (a route's destination, a neighbour's address).
func (e *eval) noteOf(dst netip.Prefix, what string) {
	for _, l := range e.leases {
		switch {
		case l.Subnet.IsValid() && l.Subnet != e.own && l.Subnet.Overlaps(dst):
			e.note(l.Subnet, what)
		case l.IPv6Subnet.IsValid() && l.IPv6Subnet != e.own6 && l.IPv6Subnet.Overlaps(dst):
			e.note(leaseKey(l), "IPv6 "+what)
		}
	}
}

func prefixAll(p string, items []string) []string {
	out := make([]string, len(items))
	for i, s := range items {
		out[i] = p + s
	}
	return out
}

// admitted is the leases weftd programs, by the agent's own admission
// rules (package admit), and those it refuses.
func (e *eval) admitted() ([]lease.Lease, []*backend.LeaseError) {
	own := lease.Lease{Subnet: e.own, IPv6Subnet: e.own6, Attrs: lease.Attrs{PublicIP: e.pubIP}}
	all := make(map[string]lease.Lease, len(e.leases))
	for _, l := range e.leases {
		all[l.Key()] = l
		if e.own.IsValid() && l.Subnet == e.own && l.Attrs.PublicIP == e.pubIP ||
			!e.own.IsValid() && e.own6.IsValid() && l.IPv6Subnet == e.own6 {
			own = l
		}
	}
	var a admit.Set
	switch e.net.Backend.Type {
	case config.BackendVXLAN:
		a.Identity = vxlan.Identities
	case config.BackendWireGuard:
		a.Identity = wireguard.Identities
	}
	ls, refused := a.Reset(e.net, own, all)
	errs := make([]*backend.LeaseError, len(refused))
	for i, r := range refused {
		errs[i] = &backend.LeaseError{Subnet: r.Subnet, Err: errors.New("refused: " + r.Reason)}
	}
	return ls, errs
}

// diffRoutes compares the routes with what the backend would program, as
// the backend itself does (backend.Diff), and names the differences.
func (e *eval) diffRoutes(have, want []netlinkx.Route, owned func(netlinkx.Route) bool) (missing, wrong, extra []string) {
	put, del := backend.Diff(have, want, netlinkx.Route.Key, owned)
	haveKey := map[netlinkx.RouteKey]netlinkx.Route{}
	for _, h := range have {
		haveKey[h.Key()] = h
	}
	for _, r := range put {
		e.noteOf(r.Dst, "route")
		if h, ok := haveKey[r.Key()]; ok {
			wrong = append(wrong, fmt.Sprintf("%s (want %s)", e.routeString(h), e.routeString(r)))
		} else {
			missing = append(missing, e.routeString(r))
		}
	}
	for _, r := range del {
		extra = append(extra, e.routeString(r))
		if _, held := e.leaseFor(r.Dst); !held && !slices.Contains(e.stale, r.Dst) {
			e.stale = append(e.stale, r.Dst)
		}
	}
	return missing, wrong, extra
}

// vxlanTables checks the neighbour and FDB entries of the family's vxlan
// device (flannel.<VNI>, flannel-v6.<VNI>).
func (e *eval) vxlanTables(fm *family, want vxlan.State) {
	dev := fm.dev.Name
	network := fm.network
	if fm.neighErr != nil {
		e.add("neighbours"+fm.suffix, Fail, fmt.Sprintf("listing neighbours of %s: %v", dev, fm.neighErr), "run doctor as root")
	} else {
		inNetwork := func(x netlinkx.Neigh) bool { return network.Contains(x.IP) }
		missing, wrong, extra := diffEntries(fm.neighs, want.Neighs, netlinkx.Neigh.Key, inNetwork,
			func(x netlinkx.Neigh) string { return fmt.Sprintf("%s lladdr %s", x.IP, x.MAC) })
		e.tableResult("neighbours"+fm.suffix, dev, len(want.Neighs), "permanent neighbour entries", missing, wrong, extra)
		put, _ := backend.Diff(fm.neighs, want.Neighs, netlinkx.Neigh.Key, inNetwork)
		for _, x := range put {
			e.noteOf(netip.PrefixFrom(x.IP, x.IP.BitLen()), "neighbour entry")
		}
	}
	if fm.fdbErr != nil {
		e.add("fdb"+fm.suffix, Fail, fmt.Sprintf("listing the FDB of %s: %v", dev, fm.fdbErr), "run doctor as root")
		return
	}
	missing, wrong, extra := diffEntries(fm.fdb, want.FDB, netlinkx.FDB.Key, nil,
		func(x netlinkx.FDB) string { return fmt.Sprintf("%s dst %s", x.MAC, x.Dst) })
	put, _ := backend.Diff(fm.fdb, want.FDB, netlinkx.FDB.Key, nil)
	for _, x := range put {
		for _, l := range e.leases {
			if fm.pubIPOf(l) == x.Dst && fm.subnetOf(l).IsValid() {
				e.noteLease(fm, l, "fdb entry")
			}
		}
	}
	e.tableResult("fdb"+fm.suffix, dev, len(want.FDB), "FDB entries", missing, wrong, extra)
}

// diffEntries compares kernel entries with what the backend would program,
// as the backend itself does (backend.Diff), and names the differences: an
// entry wanted under a key the kernel holds differently is wrong, one under
// a key it lacks is missing.
func diffEntries[T comparable, K comparable](have, want []T, key func(T) K, owned func(T) bool, name func(T) string) (missing, wrong, extra []string) {
	put, del := backend.Diff(have, want, key, owned)
	present := make(map[K]bool, len(have))
	for _, x := range have {
		present[key(x)] = true
	}
	for _, x := range put {
		if present[key(x)] {
			wrong = append(wrong, name(x))
		} else {
			missing = append(missing, name(x))
		}
	}
	for _, x := range del {
		extra = append(extra, name(x))
	}
	return missing, wrong, extra
}

func (e *eval) tableResult(check, dev string, total int, what string, missing, wrong, extra []string) {
	msg := fmt.Sprintf("%d of %d %s on %s present", total-len(missing)-len(wrong), total, what, dev)
	details := append(append(prefixAll("missing: ", missing), prefixAll("differs (want): ", wrong)...), prefixAll("extra: ", extra)...)
	var problems []string
	for _, p := range []struct {
		n    int
		what string
	}{{len(missing), "missing"}, {len(wrong), "differ"}, {len(extra), "extra"}} {
		if p.n > 0 {
			problems = append(problems, fmt.Sprintf("%d %s", p.n, p.what))
		}
	}
	if len(problems) > 0 {
		msg += ": " + strings.Join(problems, ", ")
	}
	hint := "weftd repairs them on every resync: if they stay wrong, weftd is stopped or failing, see its log"
	switch {
	case len(missing)+len(wrong) > 0:
		e.add(check, Fail, msg, hint, firstN(details)...)
	case len(extra) > 0:
		e.add(check, Warn, msg, hint, firstN(details)...)
	default:
		e.add(check, OK, msg, "")
	}
}

// ---- 5. forwarding ----

func (e *eval) forwarding() {
	e.ipForward("ip-forward", "net/ipv4/ip_forward", "")
	e.rpFilter()
	e.bridge()
}

// ipForward checks the family's forwarding sysctl, key below /proc/sys.
func (e *eval) ipForward(check, key, ip string) {
	name := strings.ReplaceAll(key, "/", ".")
	switch v, ok := e.f.Node.Sysctls[key]; {
	case !ok:
		e.add(check, Warn, "cannot read /proc/sys/"+key, "run doctor as root, in the node's network namespace")
	case v == "1":
		e.add(check, OK, name+" = 1", "")
	default:
		e.add(check, Fail, name+" = "+v+": this node drops the "+ip+"pod traffic it should route",
			"sysctl -w "+name+"=1, and persist it in /etc/sysctl.d/")
	}
}

func (e *eval) rpFilter() {
	sys := e.f.Node.Sysctls
	all, ok := sys["net/ipv4/conf/all/rp_filter"]
	if !ok {
		e.add("rp-filter", Skip, "cannot read net.ipv4.conf.all.rp_filter", "")
		return
	}
	parts := []string{"all=" + all}
	strict := false
	for _, ifc := range []string{e.devName(), e.ulName} {
		if ifc == "" {
			continue
		}
		v, ok := sys["net/ipv4/conf/"+ifc+"/rp_filter"]
		if !ok {
			continue
		}
		parts = append(parts, ifc+"="+v)
		// The kernel uses the larger of all and the interface's value.
		if max(atoi(all), atoi(v)) == 1 {
			strict = true
		}
	}
	msg := "rp_filter " + strings.Join(parts, ", ")
	switch {
	case strict && e.routeMissing > 0:
		e.add("rp-filter", Warn, msg+": strict reverse-path filtering drops packets from remote subnets this node has no route back to (see routes)",
			"fix the routes; or loosen it: "+e.rpFilterFix())
	case strict:
		e.add("rp-filter", OK, msg+" (strict, fine while every remote subnet is routed back the way it arrives)", "")
	default:
		e.add("rp-filter", OK, msg, "")
	}
}

// rpFilterFix is the sysctl that makes reverse-path filtering loose on
// the interfaces overlay traffic arrives by.
func (e *eval) rpFilterFix() string {
	keys := []string{"net.ipv4.conf.all.rp_filter=2"}
	for _, ifc := range []string{e.devName(), e.ulName} {
		if ifc != "" {
			keys = append(keys, "net.ipv4.conf."+ifc+".rp_filter=2")
		}
	}
	return "sysctl -w " + strings.Join(keys, " ")
}

func (e *eval) devName() string {
	if e.dev != nil {
		return e.dev.Name
	}
	return ""
}

func atoi(s string) int {
	n, _ := strconv.Atoi(strings.TrimSpace(s))
	return n
}

// bridgeName is the pod bridge of flannel's CNI conflist.
const bridgeName = "cni0"

func (e *eval) bridge() {
	br := e.link(bridgeName)
	if br == nil {
		e.add("cni0", OK, "no cni0 bridge: no pod has started on this node yet", "")
		return
	}
	mtu, of := e.podMTU()
	var problems []string
	status := OK
	if mtu > 0 && br.MTU > mtu {
		problems = append(problems, fmt.Sprintf("MTU %d exceeds %s's %d: pods' full-size packets are dropped in the overlay", br.MTU, of, mtu))
		status = Fail
	}
	if e.own.IsValid() && len(br.Addrs) > 0 {
		want := netip.PrefixFrom(lease.FirstIP(e.own), e.own.Bits())
		if v4 := ipv4(br.Addrs); len(v4) > 0 && !slices.Contains(v4, want) {
			problems = append(problems, fmt.Sprintf("has %s, not %s (this node's subnet changed; old pods keep old addresses)", prefixes(v4), want))
			status = Fail
		}
	}
	if len(problems) > 0 {
		e.add("cni0", status, "cni0 "+strings.Join(problems, "; "),
			"delete the bridge (ip link del cni0) and recreate the pods: the bridge plugin rebuilds it from the subnet file")
		return
	}
	msg := fmt.Sprintf("cni0 MTU %d", br.MTU)
	if mtu > 0 {
		msg += fmt.Sprintf(" ≤ %s's %d", of, mtu)
	}
	e.add("cni0", OK, msg+", "+prefixes(ipv4(br.Addrs)), "")
}

// ---- 6. masquerade ----

// masqHint is what to do about missing masquerade rules.
const masqHint = "weftd --ip-masq installs them within --iptables-resync (5 s): is weftd running with --ip-masq?"

func (e *eval) masquerade() {
	m := e.f.Node.Masq
	switch {
	case e.env == nil:
		e.add("masquerade", Skip, "no subnet file: FLANNEL_IPMASQ unknown", "")
		return
	case !e.env.IPMasq:
		e.add("masquerade", OK, "FLANNEL_IPMASQ=false: weftd does not masquerade (the bridge plugin does, per pod)", "")
		return
	case !m.Checked || !e.own.IsValid():
		e.add("masquerade", Skip, "rules not read: needs the config and this node's subnet", "")
		return
	case m.Err != nil:
		e.add("masquerade", Fail, fmt.Sprintf("listing %s rules: %v", m.Tool, m.Err), "is "+m.Tool+" installed? run doctor as root")
		return
	}
	network := e.env.Network.Masked()
	if e.net != nil {
		network = e.net.Network
	}
	if m.Tool != "nftables" {
		e.iptablesMasq("masquerade", "", m, network, e.own)
		return
	}
	if !m.TableExists {
		e.add("masquerade", Fail, "FLANNEL_IPMASQ=true but the nftables table inet "+masq.NFTTable+" is missing", masqHint)
		return
	}
	e.nftMasq("masquerade", "", m, masq.Config{Network: network, Subnet: e.own, Masquerade: true, NoFullyRandom: e.f.Options.IPMasqFullyRandomDisable}, network)
}

// nftMasq checks that table inet weft's postrouting chain (m) holds the
// masquerade rules of cfg, one family's (ip: "" or "IPv6 "), for network.
func (e *eval) nftMasq(check, ip string, m MasqFacts, cfg masq.Config, network netip.Prefix) {
	post, _ := masq.NFTRules(cfg)
	var missing []string
	for _, r := range post {
		if !slices.Contains(m.Comments, r.Comment) {
			missing = append(missing, r.Rule)
		}
	}
	if len(missing) > 0 {
		e.add(check, Fail, fmt.Sprintf("table inet %s lacks %s for %s", masq.NFTTable, plural(len(missing), "rule", "rules"), network), masqHint, firstN(missing)...)
		return
	}
	e.add(check, OK, fmt.Sprintf("table inet %s: %d %spostrouting rules for %s", masq.NFTTable, len(post), ip, network), "")
}

// iptablesMasq checks the nat chain WEFT-POSTRTG that m lists, of iptables
// (of: "") or ip6tables (of: "ip6tables' "): there, jumped to from
// POSTROUTING, with flannel's rules for network and own.
func (e *eval) iptablesMasq(check, of string, m MasqFacts, network, own netip.Prefix) {
	switch {
	case !m.ChainExists:
		e.add(check, Fail, "FLANNEL_IPMASQ=true but "+cmp.Or(of, "the ")+"nat chain "+masq.ChainPostrouting+" is missing", masqHint)
		return
	case !m.Jump:
		e.add(check, Fail, of+"POSTROUTING does not jump to "+masq.ChainPostrouting+": its rules never run", masqHint)
		return
	}
	have, n := map[string]bool{}, 0
	for _, r := range m.Rules {
		if strings.HasPrefix(r, "-A ") {
			have[normRule(r)] = true
			n++
		}
	}
	if missing := missingMasqRules(have, network, own); len(missing) > 0 {
		e.add(check, Fail, fmt.Sprintf("%s%s lacks %s for %s", of, masq.ChainPostrouting, plural(len(missing), "rule", "rules"), network), masqHint, firstN(missing)...)
		return
	}
	e.add(check, OK, fmt.Sprintf("%s%s: %d rules for %s, jumped to from POSTROUTING", of, masq.ChainPostrouting, n, network), "")
}

// normRule is an iptables rule as compared: quotes dropped, spaces folded.
func normRule(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, `"`, "")), " ")
}

// missingMasqRules is flannel's masquerade rules for network and own that
// have (normRule'd) lacks. weftd adds --random-fully where iptables knows
// it, so either form is accepted: the one with fewer missing counts.
func missingMasqRules(have map[string]bool, network, own netip.Prefix) []string {
	var best []string
	for i, rf := range []bool{true, false} {
		mr, _ := masq.IPTablesRules(network, own, rf)
		var missing []string
		for _, r := range mr.Rules {
			if !have[normRule(r.String())] {
				missing = append(missing, r.String())
			}
		}
		if i == 0 || len(missing) < len(best) {
			best = missing
		}
	}
	return best
}
