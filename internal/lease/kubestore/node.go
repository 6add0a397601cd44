package kubestore

import (
	"errors"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/kubeannot"
)

// families are the address families the network config enables.
type families struct{ v4, v6 bool }

// podCIDRs returns a node's IPv4 and IPv6 pod subnets, as flannel reads
// them: spec.podCIDRs, or spec.podCIDR when that list is empty; at most
// one subnet per family, so never more than two. A subnet is invalid when
// the node has none of that family.
func podCIDRs(spec corev1.NodeSpec) (v4, v6 netip.Prefix, err error) {
	list := spec.PodCIDRs
	if len(list) == 0 && spec.PodCIDR != "" {
		list = []string{spec.PodCIDR}
	}
	if len(list) > 2 {
		return v4, v6, fmt.Errorf("podCIDRs %v: more than one per address family", list)
	}
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("podCIDR %q: %w", s, err)
		}
		p = p.Masked()
		if p.Addr().Is4() {
			if v4.IsValid() {
				return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("podCIDRs %v: two IPv4 subnets", list)
			}
			v4 = p
		} else {
			if v6.IsValid() {
				return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("podCIDRs %v: two IPv6 subnets", list)
			}
			v6 = p
		}
	}
	return v4, v6, nil
}

func hasPodCIDR(n *corev1.Node) bool { return n.Spec.PodCIDR != "" || len(n.Spec.PodCIDRs) > 0 }

// errNotManaged marks a node whose agent publishes no lease (no
// kube-subnet-manager=true): not an error, just not in the lease set.
var errNotManaged = errors.New("not managed")

// nodeLease is the lease a node publishes (flannel's nodeToLease,
// kube.go:542-622): its podCIDR of each enabled family and the
// annotations. It has no expiration: nodes do not expire.
func nodeLease(k kubeannot.Keys, n *corev1.Node, fam families) (lease.Lease, error) {
	if !k.Managed(n.Annotations) {
		return lease.Lease{}, errNotManaged
	}
	v4, v6, err := podCIDRs(n.Spec)
	if err != nil {
		return lease.Lease{}, err
	}
	attrs, err := k.Attrs(n.Annotations, fam.v4, fam.v6)
	if err != nil {
		return lease.Lease{}, err
	}
	l := lease.Lease{Attrs: attrs, Created: n.CreationTimestamp.UnixNano()}
	if fam.v4 {
		if !v4.IsValid() {
			return lease.Lease{}, fmt.Errorf("no IPv4 podCIDR (podCIDRs %v)", cidrList(n.Spec))
		}
		l.Subnet = v4
	}
	if fam.v6 {
		if !v6.IsValid() {
			return lease.Lease{}, fmt.Errorf("no IPv6 podCIDR (podCIDRs %v)", cidrList(n.Spec))
		}
		l.IPv6Subnet = v6
	}
	return l, nil
}

func cidrList(spec corev1.NodeSpec) []string {
	if len(spec.PodCIDRs) == 0 && spec.PodCIDR != "" {
		return []string{spec.PodCIDR}
	}
	return spec.PodCIDRs
}

// inside reports whether subnet p lies within network n.
func inside(n, p netip.Prefix) bool {
	return n.IsValid() && n.Bits() <= p.Bits() && n.Contains(p.Addr())
}
