package lab

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/internal/lease/kubeannot"
)

// KubeStatus reads each lab node's Node object through the admin client
// (Lab.KubeClient). The annotations are read under flannel's default
// prefix, the one the lab's agents use.
func (l *Lab) KubeStatus(ctx context.Context) (KubeStatus, error) {
	s := KubeStatus{APIServer: l.APIServer}
	cs, err := l.KubeClient()
	if err != nil {
		return s, err
	}
	keys, err := kubeannot.NewKeys(kubeannot.DefaultPrefix)
	if err != nil {
		return s, err
	}
	for _, n := range l.Nodes {
		ns := KubeNodeStatus{Index: n.Index, Name: n.Name}
		node, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return s, fmt.Errorf("node %d: get Node %s: %w", n.Index, n.Name, err)
		default:
			ns.Found = true
			ns.PodCIDRs = node.Spec.PodCIDRs
			if len(ns.PodCIDRs) == 0 && node.Spec.PodCIDR != "" {
				ns.PodCIDRs = []string{node.Spec.PodCIDR}
			}
			ns.Managed = keys.Managed(node.Annotations)
			ns.BackendType = node.Annotations[keys.BackendType]
			ns.PublicIP = node.Annotations[keys.PublicIP]
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeNetworkUnavailable {
					ns.NetworkUnavailable = fmt.Sprintf("%s (%s)", c.Status, c.Reason)
				}
			}
		}
		s.Nodes = append(s.Nodes, ns)
	}
	return s, nil
}
