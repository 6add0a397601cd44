package lab

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// KubeStatus is the Kubernetes side of a --store kube lab, as its API
// server holds it: each lab node's Node object.
type KubeStatus struct {
	APIServer string
	Nodes     []KubeNodeStatus
}

// KubeNodeStatus is one lab node's Node object.
type KubeNodeStatus struct {
	Index int
	Name  string
	Found bool // the Node exists
	// PodCIDRs are spec.podCIDRs (spec.podCIDR when the list is empty).
	PodCIDRs []string
	// The annotations the agent publishes (flannel's keys): empty when
	// absent.
	Managed     bool // kube-subnet-manager=true
	BackendType string
	PublicIP    string
	// NetworkUnavailable is the condition's status and reason ("False
	// (FlannelIsUp)"); empty when the Node has none.
	NetworkUnavailable string
}

// Write prints the API server and a table of the Nodes, each line
// prefixed with indent.
func (s KubeStatus) Write(w io.Writer, indent string) {
	fmt.Fprintf(w, "%sapiserver %s\n", indent, s.APIServer)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "%sNODE\tNODE OBJECT\tPODCIDR\tBACKEND-TYPE\tPUBLIC-IP\tNETWORKUNAVAILABLE\n", indent)
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	for _, n := range s.Nodes {
		if !n.Found {
			fmt.Fprintf(tw, "%sn%d\t%s (not registered)\t-\t-\t-\t-\n", indent, n.Index, n.Name)
			continue
		}
		bt := dash(n.BackendType)
		switch {
		case !n.Managed:
			bt = "- (no kube-subnet-manager=true)"
		case n.BackendType == "":
			bt = `""` // udp publishes an empty type
		}
		fmt.Fprintf(tw, "%sn%d\t%s\t%s\t%s\t%s\t%s\n", indent, n.Index, n.Name, dash(strings.Join(n.PodCIDRs, ",")), bt, dash(n.PublicIP), dash(n.NetworkUnavailable))
	}
	_ = tw.Flush()
}
