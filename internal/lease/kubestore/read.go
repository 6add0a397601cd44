package kubestore

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/kubeannot"
)

// What a reader other than the agent (weft doctor) needs to see nodes as
// the agent sees them, without a second codec.

// ErrNotManaged is NodeLease's answer for a node whose agent publishes no
// lease (no kube-subnet-manager=true annotation).
var ErrNotManaged = errNotManaged

// NodeLease is the lease node n publishes, read as Watch reads it, for
// the families the network config enables (v4, v6).
func NodeLease(k kubeannot.Keys, n *corev1.Node, v4, v6 bool) (lease.Lease, error) {
	return nodeLease(k, n, families{v4: v4, v6: v6})
}

// PodCIDRs are a node's IPv4 and IPv6 pod subnets as the agent reads them
// (spec.podCIDRs, else spec.podCIDR); a subnet is invalid when the node
// has none of that family.
func PodCIDRs(n *corev1.Node) (v4, v6 netip.Prefix, err error) { return podCIDRs(n.Spec) }

// ClientConfig is the client config the agent builds from --kube-api-url
// (apiURL) and --kubeconfig-file (kubeconfig): with neither, the
// in-cluster config of the pod's service account.
func ClientConfig(apiURL, kubeconfig string) (*rest.Config, error) {
	if apiURL == "" && kubeconfig == "" {
		// What clientcmd.BuildConfigFromFlags does with neither, without
		// its fallback to an empty default config, whose error ("no
		// configuration has been provided") hides what is missing.
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kubernetes client config: not in a pod (%w); give --kubeconfig-file or --kube-api-url", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags(apiURL, kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	return cfg, nil
}
