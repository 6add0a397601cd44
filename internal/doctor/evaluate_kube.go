package doctor

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease/kubeannot"
	"github.com/weft-net/weft/internal/lease/kubestore"
)

// The Kubernetes side (--kube-subnet-mgr), in place of etcd's store,
// config, leases and pool checks: the API server with the agent's
// credentials, its RBAC, the net-conf, this node's Node and podCIDR, and
// the lease set every node publishes. After the subnet file (which gives
// this node's PublicIP and device), kubeOwnNode checks what this node
// publishes and its NetworkUnavailable condition.

const rbacHint = "weftd needs flannel's ClusterRole: nodes get, list, watch and nodes/status patch (ClusterRole weft in deploy/kube/weft.yml, bound to the agent's ServiceAccount)"

// apiUp reports whether the API server answered the agent's credentials.
func (e *eval) apiUp() bool {
	k := e.f.Kube
	return k.Err == nil && k.VersionErr == nil
}

func (e *eval) kube() {
	k := e.f.Kube
	e.kubeAPI()
	e.kubeRBAC()
	switch {
	case errors.Is(k.ConfigErr, fs.ErrNotExist):
		e.add("config", Fail, fmt.Sprintf("no net-conf at %s", k.ConfigSource),
			"weftd waits for it: mount the ConfigMap's net-conf.json there (kube-weft-cfg in deploy/kube/weft.yml), or check --net-config-path")
	case k.ConfigErr != nil:
		e.add("config", Fail, fmt.Sprintf("reading the net-conf %s: %v", k.ConfigSource, k.ConfigErr), "check --net-config-path")
	default:
		e.parseConfig(k.ConfigSource, k.Config)
	}
	e.kubeNode()
	e.podCIDR()
	e.kubeLeases()
}

func (e *eval) kubeAPI() {
	k := e.f.Kube
	switch {
	case k.Err != nil:
		e.add("kube-api", Fail, k.Err.Error(),
			"give doctor weftd's --kubeconfig-file or --kube-api-url, or run it in weftd's pod (kubectl exec), where the in-cluster service account is")
	case apierrors.IsUnauthorized(k.VersionErr):
		e.add("kube-api", Fail, fmt.Sprintf("API server %s refuses the agent's credentials (%s): %v", k.Server, k.Credentials, k.VersionErr),
			"the token expired or was revoked, or the certificate is not the cluster's: renew the kubeconfig or the ServiceAccount token")
	case k.VersionErr != nil:
		e.add("kube-api", Fail, fmt.Sprintf("API server %s unreachable with the agent's credentials (%s): %v", k.Server, k.Credentials, k.VersionErr),
			"is kube-apiserver up and reachable from this node? check the kubeconfig's server, --kube-api-url")
	default:
		e.add("kube-api", OK, fmt.Sprintf("API server %s %s, credentials from %s", k.Server, k.Version, k.Credentials), "")
	}
}

func (e *eval) kubeRBAC() {
	k := e.f.Kube
	if !e.apiUp() {
		e.add("kube-rbac", Skip, "RBAC not checked: the API server is unreachable", "")
		return
	}
	var allowed, missing, failed []string
	for _, a := range k.Access {
		switch {
		case a.Err != nil:
			failed = append(failed, fmt.Sprintf("%s: %v", a.Permission(), a.Err))
		case a.Allowed:
			allowed = append(allowed, a.Permission())
		default:
			missing = append(missing, a.Permission())
		}
	}
	switch {
	case len(missing) > 0:
		e.add("kube-rbac", Fail, "the agent may not "+strings.Join(missing, ", "), rbacHint, failed...)
	case len(failed) > 0:
		e.add("kube-rbac", Warn, fmt.Sprintf("%s not reviewed", plural(len(failed), "permission", "permissions")),
			"a SelfSubjectAccessReview is open to every authenticated user; is the authorization API served?", firstN(failed)...)
	default:
		e.add("kube-rbac", OK, "the agent may "+strings.Join(allowed, ", "), "")
	}
}

func (e *eval) kubeNode() {
	k := e.f.Kube
	switch {
	case !e.apiUp():
		e.add("kube-node", Skip, "Node not read: the API server is unreachable", "")
	case k.NodeNameErr != nil:
		e.add("kube-node", Fail, "which Node is this? "+k.NodeNameErr.Error(),
			"weftd learns its node from NODE_NAME (the DaemonSet sets it from spec.nodeName); to diagnose without a running weftd, set NODE_NAME for doctor")
	case apierrors.IsNotFound(k.NodeErr):
		e.add("kube-node", Fail, fmt.Sprintf("Node %s (from %s) not found", k.NodeName, k.NodeNameFrom),
			"kubelet registers its Node as it starts: is it running? is NODE_NAME this node's name (kubectl get nodes)?")
	case apierrors.IsForbidden(k.NodeErr):
		e.add("kube-node", Fail, fmt.Sprintf("get Node %s: %v", k.NodeName, k.NodeErr), rbacHint)
	case k.NodeErr != nil:
		e.add("kube-node", Fail, fmt.Sprintf("get Node %s: %v", k.NodeName, k.NodeErr), "see kube-api")
	default:
		e.add("kube-node", OK, fmt.Sprintf("Node %s (from %s) exists", k.NodeName, k.NodeNameFrom), "")
	}
}

// allocHint says how a node gets a podCIDR.
func allocHint(node string, n *config.Network) string {
	network := "<Network>"
	if n != nil && n.EnableIPv4 {
		network = n.Network.String()
	}
	return fmt.Sprintf("the controller-manager gives podCIDRs with --allocate-node-cidrs=true --cluster-cidr=%s; or set one by hand: kubectl patch node %s -p '{\"spec\":{\"podCIDR\":\"…\",\"podCIDRs\":[\"…\"]}}'; weftd waits and goes on by itself", network, node)
}

func (e *eval) podCIDR() {
	k := e.f.Kube
	if k.Node == nil {
		e.add("pod-cidr", Skip, "podCIDR not read: no Node", "")
		return
	}
	name := k.Node.Name
	v4, v6, err := kubestore.PodCIDRs(k.Node)
	switch {
	case err != nil:
		e.add("pod-cidr", Fail, fmt.Sprintf("Node %s: %v", name, err), "a node has at most one podCIDR per address family: fix spec.podCIDRs")
		return
	case !v4.IsValid() && !v6.IsValid():
		e.add("pod-cidr", Fail, fmt.Sprintf("Node %s has no podCIDR: weftd waits for one (healthz ok, readyz not)", name), allocHint(name, e.net))
		return
	case e.net == nil:
		e.add("pod-cidr", OK, fmt.Sprintf("Node %s: podCIDRs %s (not compared: no valid net-conf)", name, strings.Join(cidrs(k.Node), ",")), "")
		return
	}
	var bad []string
	var ok []string
	check := func(enabled bool, family string, p, network netip.Prefix, field string) {
		if !enabled {
			return
		}
		switch {
		case !p.IsValid():
			bad = append(bad, fmt.Sprintf("no %s podCIDR, but the net-conf enables %s (%s %s)", family, family, field, network))
		case !network.Contains(p.Addr()) || p.Bits() < network.Bits():
			bad = append(bad, fmt.Sprintf("podCIDR %s is outside the net-conf's %s %s", p, field, network))
		default:
			ok = append(ok, fmt.Sprintf("%s in %s %s", p, field, network))
		}
	}
	check(e.net.EnableIPv4, "IPv4", v4, e.net.Network, "Network")
	check(e.net.EnableIPv6, "IPv6", v6, e.net.IPv6Network, "IPv6Network")
	if len(bad) > 0 {
		e.add("pod-cidr", Fail, fmt.Sprintf("Node %s: %s", name, strings.Join(bad, "; ")),
			"the controller-manager's --cluster-cidr must lie within the net-conf's Network (and IPv6Network): weftd refuses this lease until they agree")
		return
	}
	e.add("pod-cidr", OK, fmt.Sprintf("Node %s: podCIDR %s", name, strings.Join(ok, ", ")), "")
}

func cidrs(n *corev1.Node) []string {
	if len(n.Spec.PodCIDRs) == 0 && n.Spec.PodCIDR != "" {
		return []string{n.Spec.PodCIDR}
	}
	return n.Spec.PodCIDRs
}

// keys are the annotation keys the agent uses.
func (e *eval) keys() (kubeannot.Keys, error) {
	return kubeannot.NewKeys(e.f.Options.KubeAnnotationPrefix)
}

// kubeLeases reads every node into its lease with the agent's codec, so
// that the datapath checks compare with the lease set the agent sees.
func (e *eval) kubeLeases() {
	k := e.f.Kube
	keys, kerr := e.keys()
	switch {
	case !e.apiUp():
		e.add("leases", Skip, "nodes not listed: the API server is unreachable", "")
		return
	case kerr != nil:
		e.add("leases", Fail, kerr.Error(), "fix --kube-annotation-prefix: weftd does not start with it")
		return
	case k.NodesErr != nil:
		hint := "see kube-api"
		if apierrors.IsForbidden(k.NodesErr) {
			hint = rbacHint
		}
		e.add("leases", Fail, fmt.Sprintf("list nodes: %v", k.NodesErr), hint)
		return
	case e.net == nil:
		e.add("leases", Skip, fmt.Sprintf("%s not read into leases: needs a valid net-conf", plural(len(k.Nodes), "node", "nodes")), "")
		return
	}
	var noCIDR, garbage, outside []string
	unmanaged := 0
	byIP := map[netip.Addr][]string{}
	for i := range k.Nodes {
		n := &k.Nodes[i]
		v4, v6, _ := kubestore.PodCIDRs(n)
		if !v4.IsValid() && !v6.IsValid() {
			noCIDR = append(noCIDR, n.Name)
		}
		l, err := kubestore.NodeLease(keys, n, e.net.EnableIPv4, e.net.EnableIPv6)
		switch {
		case errors.Is(err, kubestore.ErrNotManaged):
			unmanaged++
			continue
		case err != nil:
			if v4.IsValid() || v6.IsValid() { // no podCIDR is said once, above
				garbage = append(garbage, fmt.Sprintf("%s: %v", n.Name, err))
			}
			continue
		}
		if !inNetwork(e.net, l) {
			outside = append(outside, fmt.Sprintf("%s (%s)", n.Name, l.Key()))
		}
		if ip := l.Attrs.PublicIP; ip.IsValid() && !ip.IsUnspecified() {
			byIP[ip] = append(byIP[ip], n.Name)
		}
		e.nodeOf[leaseKey(l)] = n.Name
		e.leases = append(e.leases, l)
	}
	e.leasesOK = true
	dups := sharedPublicIPs(byIP, "is published by")

	msg := fmt.Sprintf("%s, %d publish leases (kube-subnet-manager=true)", plural(len(k.Nodes), "node", "nodes"), len(e.leases))
	if unmanaged > 0 {
		msg += fmt.Sprintf(", %d without a weft or flannel agent", unmanaged)
	}
	var problems, details []string
	note := func(items []string, what string) {
		if len(items) > 0 {
			problems = append(problems, fmt.Sprintf("%d %s", len(items), what))
			details = append(details, items...)
		}
	}
	note(noCIDR, "without a podCIDR")
	note(garbage, "with unusable annotations")
	note(outside, "with a podCIDR outside the network")
	note(dups, "PublicIPs published by several nodes")
	switch {
	case len(problems) > 0:
		hint := "a node without a podCIDR waits for the controller-manager (--allocate-node-cidrs); the other nodes route to none of these until their agents publish usable leases"
		if len(noCIDR) > 0 {
			problems[0] += ": " + strings.Join(firstN(noCIDR), ", ")
			details = details[len(noCIDR):]
		}
		e.add("leases", Warn, msg+"; "+strings.Join(problems, ", "), hint, firstN(details)...)
	case len(e.leases) == 0:
		e.add("leases", Warn, msg, "no agent has published its lease: start weftd (the DaemonSet)")
	default:
		e.add("leases", OK, msg+", all valid", "")
	}
}

// ownNode is this node's Node when it was read.
func (e *eval) ownNode() *corev1.Node {
	if e.f.Kube == nil {
		return nil
	}
	return e.f.Kube.Node
}

// kubeOwnNode checks what this node publishes (its annotations, against
// what the agent runs with) and its NetworkUnavailable condition.
func (e *eval) kubeOwnNode() {
	node := e.ownNode()
	keys, kerr := e.keys()
	if node == nil || kerr != nil {
		e.add("annotations", Skip, "annotations not read: no Node (or no valid --kube-annotation-prefix)", "")
		e.add("node-network", Skip, "conditions not read: no Node", "")
		return
	}
	e.annotations(node, keys)
	e.networkUnavailable(node)
}

func (e *eval) annotations(node *corev1.Node, keys kubeannot.Keys) {
	ann := node.Annotations
	var bad, good []string
	if !keys.Managed(ann) {
		bad = append(bad, fmt.Sprintf("%s=%q, not \"true\": this node publishes no lease, no other node routes to it", keys.KubeSubnetManager, ann[keys.KubeSubnetManager]))
	} else {
		good = append(good, keys.KubeSubnetManager+"=true")
	}
	if e.net != nil {
		want := e.net.Backend.Type
		if want == config.BackendUDP {
			want = "" // as flannel's udp backend publishes it
		}
		if got := ann[keys.BackendType]; got != want {
			bad = append(bad, fmt.Sprintf("%s=%q, but the net-conf's backend is %s", keys.BackendType, got, e.net.Backend.Type))
		} else {
			good = append(good, fmt.Sprintf("backend-type %q", got))
		}
	}
	wantIP, why := e.pubIP, "this node's PublicIP"
	if o := ann[keys.PublicIPOverwrite]; o != "" {
		if ip, err := netip.ParseAddr(o); err == nil {
			wantIP, why = ip, keys.PublicIPOverwrite
		}
	}
	if got := ann[keys.PublicIP]; wantIP.IsValid() {
		if got != wantIP.String() {
			bad = append(bad, fmt.Sprintf("%s=%q, but %s is %s: other nodes send this node's traffic there", keys.PublicIP, got, why, wantIP))
		} else {
			good = append(good, "public-ip "+got)
		}
	}
	if e.net != nil && e.net.Backend.Type == config.BackendVXLAN && e.dev != nil && len(e.dev.MAC) > 0 {
		mac, _ := keys.VtepMACs(ann)
		switch {
		case mac == nil:
			bad = append(bad, fmt.Sprintf("%s=%q has no VtepMAC", keys.BackendData, ann[keys.BackendData]))
		case mac.String() != e.dev.MAC.String():
			bad = append(bad, fmt.Sprintf("%s VtepMAC %s, but %s has %s: other nodes' FDB and neighbours point elsewhere", keys.BackendData, mac, e.dev.Name, e.dev.MAC))
		default:
			good = append(good, "VtepMAC = "+e.dev.Name+"'s")
		}
	}
	if len(bad) > 0 {
		e.add("annotations", Fail, fmt.Sprintf("Node %s: %s", node.Name, bad[0]),
			"weftd publishes them when it takes its lease: restart weftd to publish them again (and check --public-ip / --iface and the public-ip-overwrite annotation)", bad[1:]...)
		return
	}
	e.add("annotations", OK, fmt.Sprintf("Node %s: %s", node.Name, strings.Join(good, ", ")), "")
}

func (e *eval) networkUnavailable(node *corev1.Node) {
	var cond *corev1.NodeCondition
	for i, c := range node.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable {
			cond = &node.Status.Conditions[i]
		}
	}
	set := e.f.Options.SetNodeNetworkUnavailable
	switch {
	case cond == nil && !set:
		e.add("node-network", OK, "no NetworkUnavailable condition; weftd leaves it alone (--set-node-network-unavailable=false)", "")
	case cond == nil:
		e.add("node-network", Warn, fmt.Sprintf("Node %s has no NetworkUnavailable condition: weftd sets it to False once its datapath is up", node.Name),
			"is weftd ready (readyz)? its log says what it waits for")
	case cond.Status == corev1.ConditionFalse:
		e.add("node-network", OK, fmt.Sprintf("NetworkUnavailable=False (%s, since %s)", cond.Reason, cond.LastTransitionTime.UTC().Format("2006-01-02 15:04:05Z")), "")
	case !set:
		e.add("node-network", Warn, fmt.Sprintf("NetworkUnavailable=%s (%s: %s), and weftd does not set it (--set-node-network-unavailable=false)", cond.Status, cond.Reason, cond.Message),
			"the node keeps its network-unavailable taint until something sets the condition False: let weftd do it (--set-node-network-unavailable=true)")
	default:
		e.add("node-network", Fail, fmt.Sprintf("NetworkUnavailable=%s (%s: %s): pods are not scheduled here", cond.Status, cond.Reason, cond.Message),
			"weftd sets it to False once its datapath is up: is it ready (readyz)? its log says why not")
	}
}
