package doctor

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/agentopts"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/subnetenv"
)

// maxDetails bounds the examples listed under one result.
const maxDetails = 5

// Encapsulation overheads (the backends' own): VXLAN over IPv4 adds outer
// IPv4, UDP, VXLAN and inner Ethernet headers; udp adds IPv4 and UDP.
const (
	vxlanOverhead = 20 + 8 + 8 + 14
	udpOverhead   = 20 + 8
)

// eval holds what the checks derive from the facts and share: the parsed
// config, the leases, this node's identity.
type eval struct {
	f   Facts
	out []Result

	net      *config.Network // nil when the config is missing or invalid
	leases   []lease.Lease   // the leases that parse, with Expiration
	leasesOK bool            // the lease listing is usable

	env     *subnetenv.Env // nil when the subnet file is unusable
	own     netip.Prefix   // this node's IPv4 subnet (from subnet.env)
	own6    netip.Prefix   // this node's IPv6 subnet (from subnet.env)
	pubIP   netip.Addr     // this node's PublicIP
	ulName  string         // underlay interface
	ulIndex int
	ulMTU   int
	ulNet   netip.Prefix

	dev          *Link // the backend's device, when found
	routeMissing int   // from the routes check, for the rp_filter note

	// nodeOf names each lease's Node (Kubernetes store); meta is each
	// etcd lease's record (etcd store); missing says, per remote subnet,
	// what this node lacks of it ("route", "fdb entry"), from the
	// datapath checks, for weft status and the peer probes.
	nodeOf  map[netip.Prefix]string
	meta    map[netip.Prefix]RawLease
	missing map[netip.Prefix]string
	// programChecked says the routes check compared the kernel with the
	// leases, programChecked6 the IPv6 routes check; stale are routed
	// subnets no lease holds.
	programChecked  bool
	programChecked6 bool
	stale           []netip.Prefix
	probed          map[netip.Prefix]*ProbeView // by the probed family's subnet
}

// Evaluate runs every check over f, in order: store (etcd, or with
// f.Kube the Kubernetes API), agent, subnet file, this node's Node object
// (Kubernetes), datapath, forwarding, masquerade.
func Evaluate(f Facts) Report {
	e := evaluate(f)
	e.peers()
	return Report{Results: e.out}
}

// evaluate runs every check but the peer probes'.
func evaluate(f Facts) *eval {
	e := &eval{f: f, nodeOf: map[netip.Prefix]string{}, meta: map[netip.Prefix]RawLease{}, missing: map[netip.Prefix]string{}, probed: map[netip.Prefix]*ProbeView{}}
	if f.Kube != nil {
		e.kube()
	} else {
		e.store()
	}
	e.agent()
	e.subnetFile()
	if f.Kube != nil {
		e.kubeOwnNode()
	}
	e.datapath()
	e.forwarding()
	e.masquerade()
	e.ipv6()
	e.kernelLimits()
	return e
}

func (e *eval) add(check string, s Status, msg, hint string, details ...string) {
	if s == OK || s == Skip {
		hint = ""
	}
	e.out = append(e.out, Result{Check: check, Status: s, Message: msg, Hint: hint, Details: details})
}

// firstN keeps at most maxDetails items, saying how many were left out.
func firstN(items []string) []string {
	if len(items) <= maxDetails {
		return items
	}
	return append(slices.Clone(items[:maxDetails]), fmt.Sprintf("… and %d more", len(items)-maxDetails))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

// ---- 1. store ----

func (e *eval) store() {
	s := e.f.Store
	eps := strings.Join(e.f.Options.Etcd.Endpoints, ",")
	switch {
	case s.Err != nil:
		e.add("store", Fail, fmt.Sprintf("etcd client for %s: %v", eps, s.Err),
			"check --etcd-endpoints and the TLS files (--etcd-certfile, --etcd-keyfile, --etcd-cafile)")
	case len(s.Endpoints) == 0 && e.f.Options.NetConfigFile != "":
		e.add("store", Skip, "etcd not contacted", "")
	case !s.Reachable():
		var errs []string
		for _, ep := range s.Endpoints {
			errs = append(errs, fmt.Sprintf("%s: %v", ep.Endpoint, ep.Err))
		}
		msg := fmt.Sprintf("etcd at %s unreachable", eps)
		if len(s.Endpoints) == 1 {
			msg = fmt.Sprintf("etcd at %s unreachable: %v", s.Endpoints[0].Endpoint, s.Endpoints[0].Err)
			errs = nil
		}
		e.add("store", Fail, msg, "is the store up? check --etcd-endpoints", errs...)
	default:
		e.storeHealth(s)
	}
	e.configCheck()
	e.leasesCheck()
	e.poolCheck()
}

func (e *eval) storeHealth(s StoreFacts) {
	var good []EndpointStatus
	var down, alarms []string
	for _, ep := range s.Endpoints {
		switch {
		case ep.Err != nil:
			down = append(down, fmt.Sprintf("%s: %v", ep.Endpoint, ep.Err))
		case len(ep.Errors) > 0:
			alarms = append(alarms, fmt.Sprintf("%s (member %x): %s", ep.Endpoint, ep.MemberID, strings.Join(ep.Errors, "; ")))
		case ep.Leader == 0:
			alarms = append(alarms, fmt.Sprintf("%s (member %x): no leader", ep.Endpoint, ep.MemberID))
		default:
			good = append(good, ep)
		}
	}
	switch {
	case len(alarms) > 0:
		e.add("store", Fail, "etcd member unhealthy: "+alarms[0],
			"etcdctl endpoint status / etcdctl alarm list; a member without a leader has lost quorum", firstN(append(alarms[1:], down...))...)
	case len(down) > 0:
		e.add("store", Warn, fmt.Sprintf("etcd %s healthy (v%s, leader %x), but %s", good[0].Endpoint, good[0].Version, good[0].Leader, plural(len(down), "endpoint unreachable", "endpoints unreachable")),
			"the client fails over; fix or drop the dead endpoints in --etcd-endpoints", firstN(down)...)
	default:
		ep := good[0]
		e.add("store", OK, fmt.Sprintf("etcd %s v%s, member %x, leader %x", ep.Endpoint, ep.Version, ep.MemberID, ep.Leader), "")
	}
}

func (e *eval) configCheck() {
	s := e.f.Store
	if s.ConfigErr == nil && s.Config == nil && !s.Reachable() && e.f.Options.NetConfigFile == "" {
		e.add("config", Skip, "network config not read: the store is unreachable", "")
		return
	}
	if s.ConfigErr != nil {
		if errors.Is(s.ConfigErr, lease.ErrNoConfig) {
			e.add("config", Fail, fmt.Sprintf("no network config at %s", s.ConfigSource),
				fmt.Sprintf(`weftd waits for it: etcdctl put %s '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}' (or check --etcd-prefix)`, s.ConfigSource))
			return
		}
		e.add("config", Fail, fmt.Sprintf("reading the network config %s: %v", s.ConfigSource, s.ConfigErr), "check --etcd-prefix / --net-config-file")
		return
	}
	e.parseConfig(s.ConfigSource, s.Config)
}

// parseConfig judges the network config read from source.
func (e *eval) parseConfig(source string, raw []byte) {
	n, warnings, err := config.Parse(raw)
	if err != nil {
		e.add("config", Fail, fmt.Sprintf("%s: %v", source, err), "fix the JSON; weftd waits until the config is valid")
		return
	}
	e.net = n
	msg := describeNetwork(n)
	if len(warnings) > 0 {
		e.add("config", Warn, msg+" — "+plural(len(warnings), "warning", "warnings"), "review the config", firstN(warnings)...)
		return
	}
	e.add("config", OK, msg, "")
}

func describeNetwork(n *config.Network) string {
	var parts []string
	if n.EnableIPv4 {
		parts = append(parts, fmt.Sprintf("network %s, subnet len %d, range %s-%s", n.Network, n.SubnetLen, n.SubnetMin, n.SubnetMax))
	}
	if n.EnableIPv6 {
		parts = append(parts, fmt.Sprintf("ipv6 network %s, subnet len %d, range %s-%s", n.IPv6Network, n.IPv6SubnetLen, n.IPv6SubnetMin, n.IPv6SubnetMax))
	}
	b := "backend " + n.Backend.Type
	var opts []string
	switch n.Backend.Type {
	case config.BackendVXLAN:
		opts = append(opts, fmt.Sprintf("VNI %d", n.Backend.VNI), fmt.Sprintf("port %d", n.Backend.Port))
		if n.Backend.DirectRouting {
			opts = append(opts, "DirectRouting")
		}
	case config.BackendUDP:
		opts = append(opts, fmt.Sprintf("port %d", n.Backend.Port))
	}
	if n.Backend.MTU != 0 {
		opts = append(opts, fmt.Sprintf("MTU %d", n.Backend.MTU))
	}
	if len(opts) > 0 {
		b += " (" + strings.Join(opts, ", ") + ")"
	}
	return strings.Join(append(parts, b), ", ")
}

// inNetwork reports whether l's subnets are what n hands out: one per
// enabled family, each inside its pool (as the store's allocator sees it).
func inNetwork(n *config.Network, l lease.Lease) bool {
	fits := func(enabled bool, pool func(*config.Network) lease.Pool, p netip.Prefix) bool {
		if !enabled {
			return !p.IsValid()
		}
		return pool(n).Contains(p)
	}
	return fits(n.EnableIPv4, lease.PoolV4, l.Subnet) && fits(n.EnableIPv6, lease.PoolV6, l.IPv6Subnet)
}

func (e *eval) leasesCheck() {
	s := e.f.Store
	switch {
	case !s.Reachable():
		e.add("leases", Skip, "leases not read: the store is unreachable", "")
		return
	case s.LeasesErr != nil:
		e.add("leases", Fail, fmt.Sprintf("listing %s: %v", s.LeasePrefix, s.LeasesErr), "check the etcd user's permissions on --etcd-prefix")
		return
	}
	now := e.f.Now
	margin := e.f.Options.RenewMargin
	if margin <= 0 {
		margin = agentopts.DefaultRenewMargin
	}
	var garbage, outside, expired, soon []string
	reservations := 0
	byIP := map[netip.Addr][]string{}
	for _, r := range s.Leases {
		v4, v6, err := lease.ParseKey(r.Key)
		if err != nil {
			garbage = append(garbage, fmt.Sprintf("%s%s: %v", s.LeasePrefix, r.Key, err))
			continue
		}
		attrs, err := lease.UnmarshalAttrs(r.Value)
		if err != nil {
			garbage = append(garbage, fmt.Sprintf("%s%s: %v (value %.60q)", s.LeasePrefix, r.Key, err, r.Value))
			continue
		}
		l := lease.Lease{Subnet: v4, IPv6Subnet: v6, Attrs: attrs}
		e.meta[v4] = r
		switch {
		case r.LeaseID == 0:
			reservations++
		case r.TTLErr != nil:
			l.Expiration = now // unknown: treat as due, never as a reservation
		default:
			l.Expiration = now.Add(r.TTL)
			if r.TTL <= 0 {
				expired = append(expired, fmt.Sprintf("%s (%s): etcd lease %x expired", r.Key, attrs.PublicIP, r.LeaseID))
			} else if r.TTL < margin/2 {
				soon = append(soon, fmt.Sprintf("%s (%s): expires in %s", r.Key, attrs.PublicIP, r.TTL.Round(time.Second)))
			}
		}
		if e.net != nil && !inNetwork(e.net, l) {
			outside = append(outside, fmt.Sprintf("%s (%s)", r.Key, attrs.PublicIP))
		}
		if attrs.PublicIP.IsValid() && !attrs.PublicIP.IsUnspecified() {
			byIP[attrs.PublicIP] = append(byIP[attrs.PublicIP], r.Key)
		}
		e.leases = append(e.leases, l)
	}
	e.leasesOK = true
	dups := sharedPublicIPs(byIP, "holds")

	msg := plural(len(s.Leases), "lease", "leases")
	if reservations > 0 {
		msg += fmt.Sprintf(" (%s)", plural(reservations, "reservation", "reservations"))
	}
	var problems, details []string
	note := func(items []string, what string) {
		if len(items) > 0 {
			problems = append(problems, fmt.Sprintf("%d %s", len(items), what))
			details = append(details, items...)
		}
	}
	note(garbage, "unparsable")
	note(outside, "outside the network's subnet range")
	note(expired, "expired")
	note(soon, fmt.Sprintf("expiring within %s (not renewed: their agents renew %s ahead)", (margin/2).Round(time.Minute), margin))
	note(dups, "PublicIPs held by several leases")
	switch {
	case len(problems) > 0:
		e.add("leases", Warn, msg+": "+strings.Join(problems, ", "),
			"unparsable and out-of-range keys keep their subnets taken: delete them with etcdctl del once their nodes are gone; a node whose lease is not renewed has a stopped or stuck agent",
			firstN(details)...)
	case len(s.Leases) == 0:
		e.add("leases", Warn, "no leases: no agent has registered", "start weftd on the nodes")
	default:
		e.add("leases", OK, msg+", all valid", "")
	}
}

func (e *eval) poolCheck() {
	if e.net == nil || !e.leasesOK {
		e.add("pool", Skip, "pool not checked: needs the config and the leases", "")
		return
	}
	type fam struct {
		name string
		pool lease.Pool
		of   func(lease.Lease) netip.Prefix
	}
	var fams []fam
	if e.net.EnableIPv4 {
		fams = append(fams, fam{"ipv4", lease.PoolV4(e.net), func(l lease.Lease) netip.Prefix { return l.Subnet }})
	}
	if e.net.EnableIPv6 {
		fams = append(fams, fam{"ipv6", lease.PoolV6(e.net), func(l lease.Lease) netip.Prefix { return l.IPv6Subnet }})
	}
	status := OK
	var parts []string
	for _, f := range fams {
		used := map[netip.Prefix]bool{}
		for _, l := range e.leases {
			if p := f.of(l); f.pool.Contains(p) {
				used[p] = true
			}
		}
		size := f.pool.Size()
		free := size - int64(len(used))
		parts = append(parts, fmt.Sprintf("%s: %d of %d subnets free", f.name, free, size))
		switch {
		case free <= 0:
			status = Fail
		case free*10 < size && status < Warn:
			status = Warn
		}
	}
	msg := strings.Join(parts, "; ")
	switch status {
	case Fail:
		e.add("pool", Fail, msg+": the pool is exhausted, a new node cannot get a subnet", "delete stale leases or widen SubnetMin/SubnetMax (or the Network)")
	case Warn:
		e.add("pool", Warn, msg+": under 10% left", "plan for more nodes: widen the range or delete stale leases")
	default:
		e.add("pool", OK, msg, "")
	}
}

// leaseFor returns the lease holding subnet p.
func (e *eval) leaseFor(p netip.Prefix) (lease.Lease, bool) {
	for _, l := range e.leases {
		if l.Subnet == p {
			return l, true
		}
	}
	return lease.Lease{}, false
}

// leasesOf returns the leases naming ip.
func (e *eval) leasesOf(ip netip.Addr) []lease.Lease {
	var out []lease.Lease
	for _, l := range e.leases {
		if l.Attrs.PublicIP == ip {
			out = append(out, l)
		}
	}
	return out
}

// sharedPublicIPs lists, sorted, each public IP that more than one holder
// (a lease key, a Node) names: "<ip> <verb> <holders>".
func sharedPublicIPs(byIP map[netip.Addr][]string, verb string) []string {
	var out []string
	for ip, holders := range byIP {
		if len(holders) > 1 {
			slices.Sort(holders)
			out = append(out, fmt.Sprintf("%s %s %s", ip, verb, strings.Join(holders, ", ")))
		}
	}
	slices.Sort(out)
	return out
}
