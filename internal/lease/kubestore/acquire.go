package kubestore

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

// Acquire implements lease.Store. This node's subnets are its
// spec.podCIDRs (hint plays no part): the IPv4 one must lie inside
// n.Network, the IPv6 one inside n.IPv6Network. A node that is not
// registered yet, or has no podCIDR yet, is waited for (logged once) until
// the informer reports one or ctx ends; flannel instead exits and
// crash-loops. The lease is then published as flannel does (package
// kubeannot), writing only the annotations that differ, with a
// strategic-merge patch on nodes/<name>/status.
//
// The lease returned carries the addresses as published: a
// public-ip(v6)-overwrite annotation replaces attrs' address, so that the
// lease equals what Watch reports for this node and the agent recognises
// it. Its expiration is now + LeaseTTL.
func (s *Store) Acquire(ctx context.Context, n *config.Network, attrs lease.Attrs, _ lease.Hint) (lease.Lease, error) {
	node, err := s.waitPodCIDR(ctx)
	if err != nil {
		return lease.Lease{}, err
	}
	l, err := s.ownLease(node, n, attrs.BackendType)
	if err != nil {
		return lease.Lease{}, err
	}
	changes, err := s.keys.Changes(node.Annotations, attrs)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("publish the lease of node %s: %w", s.nodeName, err)
	}
	if l.Attrs, err = s.published(node.Annotations, attrs); err != nil {
		return lease.Lease{}, fmt.Errorf("publish the lease of node %s: %w", s.nodeName, err)
	}
	if changes != nil {
		if err := s.patchAnnotations(ctx, changes); err != nil {
			return lease.Lease{}, err
		}
	}
	l.Expiration = time.Now().Add(LeaseTTL)
	return l, nil
}

// waitPodCIDR returns this node from the cache once it has a podCIDR.
func (s *Store) waitPodCIDR(ctx context.Context) (*corev1.Node, error) {
	for {
		changed := s.ownChanged() // before reading, so no change is missed
		node, ok := s.cachedNode(s.nodeName)
		switch {
		case ok && hasPodCIDR(node):
			if s.waitLogged.Load() {
				s.log.Info("node has a podCIDR now", "node", s.nodeName, "podCIDRs", cidrList(node.Spec))
			}
			return node, nil
		case ok:
			if !s.waitLogged.Swap(true) {
				s.log.Info("node has no podCIDR yet; waiting for kube-controller-manager to assign one", "node", s.nodeName)
				s.waiting("node " + s.nodeName + " has no podCIDR yet; waiting for kube-controller-manager to assign one")
			}
		default:
			if !s.foundLogged.Swap(true) {
				s.log.Info("node not registered yet; waiting for it", "node", s.nodeName)
				s.waiting("node " + s.nodeName + " is not registered yet")
			}
		}
		select {
		case <-ctx.Done():
			if ok {
				return nil, fmt.Errorf("node %s has no podCIDR yet: %w", s.nodeName, ctx.Err())
			}
			return nil, fmt.Errorf("node %s is not registered yet: %w", s.nodeName, ctx.Err())
		case <-changed:
		}
	}
}

// waiting passes why Acquire waits to Options.Waiting.
func (s *Store) waiting(why string) {
	if s.o.Waiting != nil {
		s.o.Waiting(why)
	}
}

// ownLease checks this node's podCIDRs against the network config and
// returns the lease's subnets.
func (s *Store) ownLease(node *corev1.Node, n *config.Network, backendType string) (lease.Lease, error) {
	v4, v6, err := podCIDRs(node.Spec)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("node %s: %w", s.nodeName, err)
	}
	var l lease.Lease
	if n.EnableIPv4 {
		switch {
		case !v4.IsValid():
			return lease.Lease{}, fmt.Errorf("node %s has no IPv4 podCIDR (podCIDRs %v) but the network config enables IPv4 (Network %s)",
				s.nodeName, cidrList(node.Spec), n.Network)
		case !inside(n.Network, v4):
			return lease.Lease{}, fmt.Errorf("node %s: podCIDR %s is outside the network config's Network %s", s.nodeName, v4, n.Network)
		}
		l.Subnet = v4
	}
	// flannel leases IPv4 only to other backends than these (kube.go:513).
	dual := backendType == "vxlan" || backendType == "host-gw" || backendType == "wireguard"
	if n.EnableIPv6 && (dual || !n.EnableIPv4) {
		switch {
		case !v6.IsValid():
			return lease.Lease{}, fmt.Errorf("node %s has no IPv6 podCIDR (podCIDRs %v) but the network config enables IPv6 (IPv6Network %s)",
				s.nodeName, cidrList(node.Spec), n.IPv6Network)
		case !inside(n.IPv6Network, v6):
			return lease.Lease{}, fmt.Errorf("node %s: IPv6 podCIDR %s is outside the network config's IPv6Network %s", s.nodeName, v6, n.IPv6Network)
		}
		l.IPv6Subnet = v6
	}
	return l, nil
}

// published is attrs with the public addresses as the node's annotations
// will carry them once changes are written.
func (s *Store) published(cur map[string]string, attrs lease.Attrs) (lease.Attrs, error) {
	ann, err := s.keys.Published(cur, attrs)
	if err != nil {
		return lease.Attrs{}, err
	}
	a := attrs
	if o := cur[s.keys.PublicIPOverwrite]; o != "" && ann[s.keys.PublicIP] == o {
		ip, err := netip.ParseAddr(o)
		if err != nil {
			return lease.Attrs{}, err
		}
		a.PublicIP = ip.Unmap()
		s.log.Info("publishing the public IP from the node's annotation", "annotation", s.keys.PublicIPOverwrite, "public_ip", a.PublicIP)
	}
	if o := cur[s.keys.PublicIPv6Overwrite]; o != "" && ann[s.keys.PublicIPv6] == o {
		ip, err := netip.ParseAddr(o)
		if err != nil {
			return lease.Attrs{}, err
		}
		a.PublicIPv6 = &ip
		s.log.Info("publishing the public IPv6 from the node's annotation", "annotation", s.keys.PublicIPv6Overwrite, "public_ipv6", ip)
	}
	return a, nil
}

// patchAnnotations writes annotations on this node through its status
// subresource, which flannel's ClusterRole grants (nodes/status patch).
func (s *Store) patchAnnotations(ctx context.Context, changes map[string]string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": changes}})
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(changes))
	for k := range changes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	err = s.client.patchNodeStatus(ctx, s.nodeName, patch)
	if err != nil {
		return apiErr("patch nodes/status of node "+s.nodeName, "nodes/status patch", err)
	}
	s.log.Info("published the lease in the node's annotations", "node", s.nodeName, "changed", keys)
	return nil
}

// Renew implements lease.Store. Nothing expires in the API: it checks,
// in the cache, that the node still has l's subnets and returns l with
// a new expiration, without a request.
func (s *Store) Renew(_ context.Context, l lease.Lease) (lease.Lease, error) {
	node, ok := s.cachedNode(s.nodeName)
	if !ok {
		return lease.Lease{}, fmt.Errorf("renew lease %s: node %s is gone", l.Key(), s.nodeName)
	}
	v4, v6, err := podCIDRs(node.Spec)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("renew lease %s: node %s: %w", l.Key(), s.nodeName, err)
	}
	if l.Subnet.IsValid() && l.Subnet != v4 || l.IPv6Subnet.IsValid() && l.IPv6Subnet != v6 {
		return lease.Lease{}, fmt.Errorf("renew lease %s: node %s's podCIDRs are now %v", l.Key(), s.nodeName, cidrList(node.Spec))
	}
	l.Expiration = time.Now().Add(LeaseTTL)
	return l, nil
}

// Complete sets this node's NetworkUnavailable condition to False, as
// flannel's CompleteLease (reason FlannelIsUp), when the store was opened
// with SetNodeNetworkUnavailable; otherwise it does nothing. The agent
// calls it once its datapath is up.
func (s *Store) Complete(ctx context.Context) error {
	if !s.o.SetNodeNetworkUnavailable {
		return nil
	}
	now := metav1.Now()
	cond := []corev1.NodeCondition{{
		Type:               corev1.NodeNetworkUnavailable,
		Status:             corev1.ConditionFalse,
		Reason:             "FlannelIsUp",
		Message:            "Flannel is running on this node",
		LastTransitionTime: now,
		LastHeartbeatTime:  now,
	}}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": cond}})
	if err != nil {
		return err
	}
	if err := s.client.patchNodeStatus(ctx, s.nodeName, patch); err != nil {
		return apiErr("set NetworkUnavailable=False on node "+s.nodeName+" (patch nodes/status)", "nodes/status patch", err)
	}
	s.log.Info("node condition NetworkUnavailable=False", "node", s.nodeName)
	return nil
}

// NodePublicIPs returns the node-public-ip and node-public-ipv6
// annotations an operator set on this node; they override --public-ip and
// --public-ipv6 and are read before the interface is chosen (flannel
// main.go:306-312). An address is invalid when not set.
func (s *Store) NodePublicIPs(ctx context.Context) (v4, v6 netip.Addr, err error) {
	ann, err := s.ownAnnotations(ctx)
	if err != nil {
		return netip.Addr{}, netip.Addr{}, err
	}
	v4, v6, err = s.keys.NodePublicIPs(ann)
	if err != nil {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("node %s: %w", s.nodeName, err)
	}
	return v4, v6, nil
}

// VtepMACs returns the VtepMACs this node published in its backend-data
// and backend-v6-data annotations, nil when there are none, so that a
// restarted vxlan backend gives its devices the MACs the other nodes
// already use (flannel kube.go:698-731).
func (s *Store) VtepMACs(ctx context.Context) (v4, v6 net.HardwareAddr, err error) {
	ann, err := s.ownAnnotations(ctx)
	if err != nil {
		return nil, nil, err
	}
	v4, v6 = s.keys.VtepMACs(ann)
	return v4, v6, nil
}

// ownAnnotations are this node's annotations under our prefix: from the
// cache, else (the list has not synced) from the API. A node that is not
// registered has none.
func (s *Store) ownAnnotations(ctx context.Context) (map[string]string, error) {
	if n, ok := s.cachedNode(s.nodeName); ok {
		return n.Annotations, nil
	}
	if s.informer.HasSynced() {
		return nil, nil
	}
	n, err := s.client.getNode(ctx, s.nodeName)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, apiErr("get node "+s.nodeName, "nodes get", err)
	}
	return n.Annotations, nil
}
