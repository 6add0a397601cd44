package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/allocator"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/disk"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/netlinkx"
)

// addInProcess is the bridge plugin's ADD with host-local IPAM
// (plugins/main/bridge cmdAdd, plugins/ipam/host-local cmdAdd, v1.9) for a
// config inProcessBridge accepted, step for step. Where the bridge plugin switches a
// thread into the pod's namespace, this talks to it through a netlink
// handle opened there, and makes the veth with its pod end already in the
// pod. On failure the caller undoes it with the bridge plugin's DEL.
func addInProcess(args *skel.CmdArgs, c bridgeConf, sw *stopwatch) (*current.Result, error) {
	host, err := netlinkx.New()
	if err != nil {
		return nil, err
	}
	defer host.Close()
	pod, err := netlinkx.NewAt(args.Netns)
	if err != nil {
		return nil, fmt.Errorf("failed to open netns %q: %w", args.Netns, err)
	}
	defer pod.Close()

	br, err := ensureBridge(host, c)
	if err != nil {
		return nil, fmt.Errorf("failed to create bridge %q: %w", c.Bridge, err)
	}
	sw.lap("bridge")
	hostVeth, err := addVeth(host, args.Netns, args.IfName, c, br)
	if err != nil {
		return nil, err
	}
	contVeth, err := pod.LinkByName(args.IfName)
	if err != nil {
		return nil, err
	}
	sw.lap("veth")

	result, err := allocate(c.ipam, args)
	if err != nil {
		return nil, err
	}
	sw.lap("host-local")
	result.Interfaces = []*current.Interface{
		{Name: br.Attrs().Name, Mac: br.Attrs().HardwareAddr.String()},
		{Name: hostVeth.Attrs().Name, Mac: hostVeth.Attrs().HardwareAddr.String()},
		{Name: args.IfName, Mac: contVeth.Attrs().HardwareAddr.String(), Sandbox: args.Netns},
	}
	gws := gateways(result, c)

	// As the bridge: no DAD (the address is ours by allocation), and a
	// gratuitous ARP when the link comes up.
	_ = pod.SetSysctl(fmt.Sprintf("net/ipv6/conf/%s/accept_dad", args.IfName), "0")
	_ = pod.SetSysctl(fmt.Sprintf("net/ipv4/conf/%s/arp_notify", args.IfName), "1")
	if err := configurePod(pod, contVeth, result); err != nil {
		return nil, err
	}
	sw.lap("pod addresses")

	if c.IsGateway {
		for _, gw := range gws {
			if err := ensureGatewayAddr(host, br, gw); err != nil {
				return nil, fmt.Errorf("failed to set bridge addr: %w", err)
			}
		}
		if err := enableForward(gws); err != nil {
			return nil, fmt.Errorf("failed to enable forwarding: %w", err)
		}
		sw.lap("gateway")
	}

	if hostVeth, err = waitPortUp(host, hostVeth.Attrs().Name); err != nil {
		return nil, err
	}
	result.Interfaces[1].Mac = hostVeth.Attrs().HardwareAddr.String()
	// The bridge's MAC may have changed with its first port.
	if br, err = host.LinkByName(c.Bridge); err != nil {
		return nil, err
	}
	result.Interfaces[0].Mac = br.Attrs().HardwareAddr.String()
	sw.lap("port up")
	if c.DNS.Nameservers != nil || c.DNS.Search != nil || c.DNS.Options != nil || c.DNS.Domain != "" {
		result.DNS = c.DNS
	}
	return result, nil
}

// ensureBridge makes the bridge if it is missing and brings it up; an
// existing link of that name must be a bridge. The bridge of a node's
// second pod and later is there and up already: it is only looked at, so
// that pods starting together do not queue for the kernel's lock to be
// told so.
func ensureBridge(h *netlinkx.Handle, c bridgeConf) (netlinkx.Link, error) {
	br, err := h.LinkByName(c.Bridge)
	if netlinkx.IsNotFound(err) {
		attrs := netlinkx.NewLinkAttrs()
		attrs.Name, attrs.MTU = c.Bridge, c.MTU
		if err := h.LinkAdd(&netlinkx.Bridge{LinkAttrs: attrs}); err != nil && !netlinkx.IsExist(err) {
			return nil, err
		}
		br, err = h.LinkByName(c.Bridge)
	}
	if err != nil {
		return nil, err
	}
	if _, ok := br.(*netlinkx.Bridge); !ok {
		return nil, fmt.Errorf("%q already exists but is not a bridge", c.Bridge)
	}
	// The bridge's routes are the plugin's, not router advertisements'.
	acceptRA := fmt.Sprintf("net/ipv6/conf/%s/accept_ra", c.Bridge)
	if v, err := h.Sysctl(acceptRA); err == nil && v != "0" {
		_ = h.SetSysctl(acceptRA, "0")
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(br); err != nil {
			return nil, err
		}
	}
	return br, nil
}

// defaultTxQLen is the queue length the kernel gives an Ethernet device
// (DEFAULT_TX_QUEUE_LEN).
const defaultTxQLen = 1000

// addVeth makes the pod's veth: its host end (vethXXXXXXXX, as the bridge
// plugin names it) up and on the bridge, its pod end ifName made straight
// in the pod's namespace at podNS.
func addVeth(h *netlinkx.Handle, podNS, ifName string, c bridgeConf, br netlinkx.Link) (netlinkx.Link, error) {
	fd, err := unix.Open(podNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("failed to open netns %q: %w", podNS, err)
	}
	defer unix.Close(fd)
	for range 10 {
		name, err := ip.RandomVethName()
		if err != nil {
			return nil, err
		}
		attrs := netlinkx.NewLinkAttrs()
		attrs.Name, attrs.MTU, attrs.MasterIndex, attrs.Flags = name, c.MTU, br.Attrs().Index, net.FlagUp
		// The bridge plugin makes the pair from the pod's side, and the
		// library gives the peer, its host end, a queue length of 0
		// while the pod's end keeps the kernel's 1000: the same here,
		// from the host's side.
		attrs.TxQLen = 0
		err = h.LinkAdd(&netlinkx.Veth{LinkAttrs: attrs, PeerName: ifName, PeerNamespace: netlinkx.NsFd(fd), PeerTxQLen: defaultTxQLen})
		if netlinkx.IsExist(err) {
			if _, lerr := h.LinkByName(name); lerr == nil {
				continue // our random name was taken: another one
			}
			return nil, fmt.Errorf("container veth name %q already exists", ifName)
		}
		if err != nil {
			return nil, fmt.Errorf("failed to make veth pair: %w", err)
		}
		v, err := h.LinkByName(name)
		if err != nil {
			return nil, err
		}
		_ = h.SetSysctl(fmt.Sprintf("net/ipv6/conf/%s/accept_ra", name), "0")
		if err := h.LinkSetHairpin(v, c.HairpinMode); err != nil {
			return nil, fmt.Errorf("failed to setup hairpin mode for %v: %w", name, err)
		}
		return v, nil
	}
	return nil, errors.New("failed to find a unique veth name")
}

// allocate is host-local's ADD for its config ipamConf: one address from
// each range set, under the store's lock, in the files host-local keeps
// (so host-local releases them on DEL).
func allocate(ipamConf *allocator.IPAMConfig, args *skel.CmdArgs) (*current.Result, error) {
	store, err := disk.New(ipamConf.Name, ipamConf.DataDir)
	if err != nil {
		return nil, err
	}
	defer store.Close()
	requested := map[string]net.IP{}
	for _, a := range ipamConf.IPArgs {
		requested[a.String()] = a
	}
	// host-local refuses a second allocation to the container by reading
	// every allocation file, under the store's lock: ten ADDs at once
	// queued behind each other's walks of hundreds of files. The walk is
	// done once, before the lock: runtimes never run two operations for
	// one container at once (CNI spec), so none of its files can appear
	// meanwhile.
	held := store.GetByID(args.ContainerID, args.IfName)
	result := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	var allocs []*allocator.IPAllocator
	release := func() {
		for _, a := range allocs {
			_ = a.Release(args.ContainerID, args.IfName)
		}
	}
	for idx, rangeset := range ipamConf.Ranges {
		a := allocator.NewIPAllocator(&rangeset, store, idx)
		var want net.IP
		for k, r := range requested {
			if rangeset.Contains(r) {
				want = r
				delete(requested, k)
				break
			}
		}
		var ipConf *current.IPConfig
		if want != nil {
			ipConf, err = a.Get(args.ContainerID, args.IfName, want)
		} else {
			ipConf, err = reserveNext(store, a, &rangeset, held, args, idx)
		}
		if err != nil {
			release()
			return nil, fmt.Errorf("failed to allocate for range %d: %w", idx, err)
		}
		allocs = append(allocs, a)
		result.IPs = append(result.IPs, ipConf)
	}
	if len(requested) != 0 {
		release()
		msg := "failed to allocate all requested IPs:"
		for _, r := range requested {
			msg += " " + r.String()
		}
		return nil, errors.New(msg)
	}
	if len(result.IPs) == 0 {
		return nil, errors.New("IPAM plugin returned missing IP config")
	}
	result.Routes = ipamConf.Routes
	return result, nil
}

// reserveNext is allocator.Get without a requested address: the next free
// address of rs after the last one reserved, reserved under the store's
// lock; held are the container's addresses already on file.
func reserveNext(store *disk.Store, a *allocator.IPAllocator, rs *allocator.RangeSet, held []net.IP, args *skel.CmdArgs, rangeID int) (*current.IPConfig, error) {
	for _, h := range held {
		if _, err := rs.RangeFor(h); err == nil {
			return nil, fmt.Errorf("%s has been allocated to %s, duplicate allocation is not allowed", h, args.ContainerID)
		}
	}
	if err := store.Lock(); err != nil {
		return nil, err
	}
	defer store.Unlock()
	iter, err := a.GetIter()
	if err != nil {
		return nil, err
	}
	for {
		ip, gw := iter.Next()
		if ip == nil {
			return nil, fmt.Errorf("no IP addresses available in range set: %s", rs.String())
		}
		ok, err := store.Reserve(args.ContainerID, args.IfName, ip.IP, strconv.Itoa(rangeID))
		if err != nil {
			return nil, err
		}
		if ok {
			return &current.IPConfig{Address: *ip, Gateway: gw}, nil
		}
	}
}

// gateways is the bridge's calcGateways: every address is the pod
// interface's (index 2 of the result), its gateway the subnet's first
// address unless IPAM named one, with a default route through the first
// of each family when c asks. It returns the gateway addresses, with the
// pod's prefix length, that the bridge takes when it is the gateway.
func gateways(r *current.Result, c bridgeConf) []netip.Prefix {
	var gws []netip.Prefix
	haveDefault := map[bool]bool{} // by IPv4
	for _, ipc := range r.IPs {
		v4 := ipc.Address.IP.To4() != nil
		ipc.Interface = current.Int(2)
		if ipc.Gateway == nil && c.IsGateway {
			ipc.Gateway = ip.NextIP(ipc.Address.IP.Mask(ipc.Address.Mask))
		}
		if c.IsDefaultGateway && !haveDefault[v4] {
			zero := net.IPv6zero
			if v4 {
				zero = net.IPv4zero.To4()
			}
			def := net.IPNet{IP: zero, Mask: net.IPMask(zero)}
			for _, rt := range r.Routes {
				if rt.GW != nil && rt.Dst.String() == def.String() {
					haveDefault[v4] = true
				}
			}
			if !haveDefault[v4] {
				r.Routes = append(r.Routes, &types.Route{Dst: def, GW: ipc.Gateway})
				haveDefault[v4] = true
			}
		}
		if c.IsGateway {
			ones, _ := ipc.Address.Mask.Size()
			if a, ok := netip.AddrFromSlice(ipc.Gateway); ok {
				gws = append(gws, netip.PrefixFrom(a.Unmap(), ones))
			}
		}
	}
	return gws
}

// configurePod is the bridge's ipam.ConfigureIface in the pod: addresses,
// the link up, IPv6 addresses settled, then the routes through the
// family's gateway.
func configurePod(h *netlinkx.Handle, link netlinkx.Link, r *current.Result) error {
	name := link.Attrs().Name
	var gw4, gw6 netip.Addr
	v6 := false
	for _, ipc := range r.IPs {
		addr, ok := netlinkx.PrefixOf(ipc.Address)
		if !ok {
			return fmt.Errorf("failed to add IP addr %v to %q: not an address", ipc, name)
		}
		if addr.Addr().Is6() && !v6 {
			// The pod's IPv6 must be on (lo's too), and its addresses
			// must survive the link going down.
			for _, ifc := range []string{"lo", name} {
				if err := h.SetSysctl(fmt.Sprintf("net/ipv6/conf/%s/disable_ipv6", ifc), "0"); err != nil {
					return fmt.Errorf("failed to enable IPv6 for interface %q: %w", ifc, err)
				}
			}
			if err := h.SetSysctl(fmt.Sprintf("net/ipv6/conf/%s/keep_addr_on_down", name), "1"); err != nil {
				return fmt.Errorf("failed to enable keep_addr_on_down for interface %q: %w", name, err)
			}
			v6 = true
		}
		if err := h.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("failed to add IP addr %v to %q: %w", ipc, name, err)
		}
		if gw, ok := netip.AddrFromSlice(ipc.Gateway); ok {
			gw = gw.Unmap()
			if gw.Is4() && !gw4.IsValid() {
				gw4 = gw
			} else if gw.Is6() && !gw6.IsValid() {
				gw6 = gw
			}
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("failed to set %q UP: %w", name, err)
	}
	if gw6.IsValid() {
		if err := settle(h, link); err != nil {
			return fmt.Errorf("failed to settle addresses for %q: %w", name, err)
		}
	}
	for _, rt := range r.Routes {
		dst, ok := netlinkx.PrefixOf(rt.Dst)
		if !ok {
			return fmt.Errorf("route %v: not a prefix", rt)
		}
		route := netlinkx.Route{Dst: dst, LinkIndex: link.Attrs().Index, Priority: rt.Priority}
		if gw, ok := netip.AddrFromSlice(rt.GW); ok {
			route.Gw = gw.Unmap()
		} else if dst.Addr().Is4() {
			route.Gw = gw4
		} else {
			route.Gw = gw6
		}
		if rt.Table != nil {
			route.Table = *rt.Table
		}
		if err := h.RouteAddECMP(route); err != nil {
			return fmt.Errorf("failed to add route '%v via %v dev %v metric %d': %w", dst, route.Gw, name, rt.Priority, err)
		}
	}
	return nil
}

// settle waits until no address of link is tentative (with DAD off, at
// once), as long as the bridge plugin would (5 s).
func settle(h *netlinkx.Handle, link netlinkx.Link) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		addrs, err := h.Addrs(link, netlinkx.FamilyV6)
		if err != nil {
			return err
		}
		tentative := false
		for _, a := range addrs {
			tentative = tentative || a.Flags&netlinkx.AddrFTentative != 0
		}
		if !tentative {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("addresses still tentative after 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ensureGatewayAddr is the bridge's ensureAddr without forceAddress: gw on
// the bridge, unless it is there; another address of its family in the
// way (any other for IPv4, an overlapping one for IPv6) is an error.
func ensureGatewayAddr(h *netlinkx.Handle, br netlinkx.Link, gw netip.Prefix) error {
	addrs, err := h.AddrList(br, netlinkx.FamilyOf(gw.Addr()))
	if err != nil {
		return fmt.Errorf("could not get list of IP addresses: %w", err)
	}
	for _, a := range addrs {
		if a == gw {
			return nil
		}
		if gw.Addr().Is4() || a.Overlaps(gw) {
			return fmt.Errorf("%q already has an IP address different from %v", br.Attrs().Name, gw)
		}
	}
	if err := h.AddrAdd(br, gw); err != nil && !netlinkx.IsExist(err) {
		return fmt.Errorf("could not add IP address %s to %q: %w", gw, br.Attrs().Name, err)
	}
	// Pinned to its own MAC, the bridge keeps it as ports come and go
	// (else it takes the lowest of its ports').
	mac, err := netlinkx.MACFrom(br.Attrs().HardwareAddr)
	if err != nil {
		return err
	}
	if err := h.LinkSetHardwareAddr(br, mac); err != nil {
		return fmt.Errorf("could not set bridge's mac: %w", err)
	}
	return nil
}

// enableForward turns on forwarding for the families of gws.
func enableForward(gws []netip.Prefix) error {
	var v4, v6 bool
	for _, gw := range gws {
		v4, v6 = v4 || gw.Addr().Is4(), v6 || gw.Addr().Is6()
	}
	if v4 {
		if err := ip.EnableIP4Forward(); err != nil {
			return err
		}
	}
	if v6 {
		return ip.EnableIP6Forward()
	}
	return nil
}

// waitPortUp waits for the veth's host end to be operationally up, as long
// as the bridge plugin does (2.55 s), checking from at once and doubling
// the wait from a millisecond where the plugin sleeps 50 ms before its
// second look.
func waitPortUp(h *netlinkx.Handle, name string) (netlinkx.Link, error) {
	var l netlinkx.Link
	var err error
	for wait, waited := time.Duration(0), time.Duration(0); waited <= 2550*time.Millisecond; waited += wait {
		time.Sleep(wait)
		wait = max(2*wait, time.Millisecond)
		if l, err = h.LinkByName(name); err != nil {
			return nil, err
		}
		if netlinkx.OperUp(l) {
			return l, nil
		}
	}
	return nil, fmt.Errorf("bridge port in error state: %s", l.Attrs().OperState)
}
