package doctor

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/weft-net/weft/internal/agentopts"
	"github.com/weft-net/weft/internal/netlinkx"
)

// flannelAnnotations are what a vxlan node publishes, written as flannel
// writes them (kube.go AcquireLease).
func flannelAnnotations(pub string, mac netlinkx.MAC) map[string]string {
	return map[string]string{
		"flannel.alpha.coreos.com/kube-subnet-manager": "true",
		"flannel.alpha.coreos.com/backend-type":        "vxlan",
		"flannel.alpha.coreos.com/backend-data":        fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, mac),
		"flannel.alpha.coreos.com/public-ip":           pub,
		"other.example.com/thing":                      "x",
	}
}

func kubeNodeObj(name, cidr string, ann map[string]string) corev1.Node {
	n := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
	if cidr != "" {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = cidr, []string{cidr}
	}
	return n
}

// healthyKube is healthy() with the leases in Kubernetes: node n1
// (192.0.2.1, 10.244.1.0/24) and its peer n2 (192.0.2.2, 10.244.2.0/24),
// the agent with flannel's ClusterRole.
func healthyKube() Facts {
	f := healthy()
	f.Options.Etcd = agentopts.Etcd{}
	f.Options.KubeSubnetMgr = true
	f.Options.KubeconfigFile = "/var/lib/weft/kubeconfig"
	f.Options.KubeAnnotationPrefix = agentopts.DefaultKubeAnnotationPrefix
	f.Options.NetConfigPath = "/etc/kube-flannel/net-conf.json"
	f.Options.SetNodeNetworkUnavailable = true
	f.Store = StoreFacts{}
	f.Agent.Procs[0].Args = []string{"/usr/bin/weftd", "--kube-subnet-mgr", "--kubeconfig-file=/var/lib/weft/kubeconfig", "--iface=eth0", "--healthz-ip=127.0.0.1", "--healthz-port=8471", "--ip-masq"}
	f.Agent.Procs[0].KubeEnv = []string{"NODE_NAME=n1"}
	for i := range f.Node.Links {
		if f.Node.Links[i].Name == "flannel.1" {
			f.Node.Links[i].MAC = mac1.HardwareAddr()
		}
	}
	own := kubeNodeObj("n1", "10.244.1.0/24", flannelAnnotations("192.0.2.1", mac1))
	own.Status.Conditions = []corev1.NodeCondition{
		{Type: corev1.NodeReady, Status: corev1.ConditionTrue},
		{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse, Reason: "FlannelIsUp", LastTransitionTime: metav1.NewTime(now.Add(-time.Hour))},
	}
	var access []Access
	for _, a := range neededAccess(false) {
		a.Allowed = true
		access = append(access, a)
	}
	f.Kube = &KubeFacts{
		Server: "https://192.0.2.254:6443", Credentials: "kubeconfig /var/lib/weft/kubeconfig", Version: "v1.37.2",
		NodeName: "n1", NodeNameFrom: "weftd pid 100's NODE_NAME",
		Node:         &own,
		Nodes:        []corev1.Node{own, kubeNodeObj("n2", "10.244.2.0/24", flannelAnnotations("192.0.2.2", mac2))},
		Access:       access,
		ConfigSource: "/etc/kube-flannel/net-conf.json",
		Config:       []byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`),
	}
	return f
}

func TestHealthyKubeNode(t *testing.T) {
	r := Evaluate(healthyKube())
	wantAllOK(t, r, []string{"kube-api", "kube-rbac", "config", "kube-node", "pod-cidr", "leases", "agent", "healthz", "readyz", "ready-marker",
		"subnet-file", "subnet-lease", "subnet-mtu", "subnet-gso", "annotations", "node-network", "underlay", "device", "routes", "neighbours", "fdb",
		"ip-forward", "rp-filter", "cni0", "masquerade"})
	for check, msg := range map[string]string{
		"kube-api":     "API server https://192.0.2.254:6443 v1.37.2, credentials from kubeconfig /var/lib/weft/kubeconfig",
		"kube-rbac":    "the agent may nodes get, nodes list, nodes watch, nodes/status patch",
		"kube-node":    "Node n1 (from weftd pid 100's NODE_NAME) exists",
		"pod-cidr":     "Node n1: podCIDR 10.244.1.0/24 in Network 10.244.0.0/16",
		"leases":       "2 nodes, 2 publish leases (kube-subnet-manager=true), all valid",
		"subnet-lease": "published on Node n1",
		"annotations":  `backend-type "vxlan", public-ip 192.0.2.1, VtepMAC = flannel.1's`,
		"node-network": "NetworkUnavailable=False (FlannelIsUp",
	} {
		if x, _ := find(r, check); !strings.Contains(x.Message, msg) {
			t.Errorf("%s: %q, want it to contain %q", check, x.Message, msg)
		}
	}
}

func TestEvaluateKube(t *testing.T) {
	forbidden := apierrors.NewForbidden(schema.GroupResource{Resource: "nodes"}, "", errors.New(`User "system:serviceaccount:kube-weft:weft" cannot list resource "nodes"`))
	runEvalCases(t, healthyKube, []evalCase{
		{
			name: "no client config",
			mutate: func(f *Facts) {
				*f.Kube = KubeFacts{ConfigSource: f.Kube.ConfigSource, Config: f.Kube.Config, Err: errors.New("kubernetes client config: not in a pod")}
			},
			check: "kube-api", status: Fail, want: []string{"not in a pod", "--kubeconfig-file"},
			also: map[string]Status{"kube-rbac": Skip, "kube-node": Skip, "pod-cidr": Skip, "leases": Skip, "annotations": Skip, "subnet-lease": Skip},
		},
		{
			name: "API server down",
			mutate: func(f *Facts) {
				f.Kube.VersionErr = errors.New("dial tcp 192.0.2.254:6443: connect: connection refused")
				f.Kube.Node, f.Kube.Nodes, f.Kube.Access = nil, nil, nil
			},
			check: "kube-api", status: Fail, want: []string{"unreachable with the agent's credentials", "connection refused", "is kube-apiserver up"},
			also: map[string]Status{"kube-rbac": Skip, "kube-node": Skip, "leases": Skip, "routes": Skip},
		},
		{
			name:   "token refused",
			mutate: func(f *Facts) { f.Kube.VersionErr = apierrors.NewUnauthorized("Unauthorized") },
			check:  "kube-api", status: Fail, want: []string{"refuses the agent's credentials", "token expired"},
		},
		{
			name: "nodes/status patch removed",
			mutate: func(f *Facts) {
				f.Kube.Access[3].Allowed = false
			},
			check: "kube-rbac", status: Fail, want: []string{"the agent may not nodes/status patch", "ClusterRole weft"},
		},
		{
			name: "no NODE_NAME",
			mutate: func(f *Facts) {
				f.Kube.NodeName, f.Kube.Node = "", nil
				f.Kube.NodeNameErr = errors.New("weftd pid 100 has no NODE_NAME in its environment, nor both POD_NAME and POD_NAMESPACE")
			},
			check: "kube-node", status: Fail, want: []string{"no NODE_NAME", "spec.nodeName"},
			also: map[string]Status{"pod-cidr": Skip, "annotations": Skip, "node-network": Skip},
		},
		{
			name: "Node not registered",
			mutate: func(f *Facts) {
				f.Kube.Node = nil
				f.Kube.NodeErr = apierrors.NewNotFound(schema.GroupResource{Resource: "nodes"}, "n1")
			},
			check: "kube-node", status: Fail, want: []string{"Node n1 (from weftd pid 100's NODE_NAME) not found", "kubelet registers"},
		},
		{
			name: "no podCIDR",
			mutate: func(f *Facts) {
				f.Kube.Node.Spec = corev1.NodeSpec{}
				f.Kube.Nodes[0].Spec = corev1.NodeSpec{}
			},
			check: "pod-cidr", status: Fail,
			want: []string{"Node n1 has no podCIDR: weftd waits", "--allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16", "kubectl patch node n1"},
			also: map[string]Status{"leases": Warn},
		},
		{
			name:   "podCIDR outside Network",
			mutate: func(f *Facts) { f.Kube.Node.Spec.PodCIDRs = []string{"10.99.1.0/24"} },
			check:  "pod-cidr", status: Fail, want: []string{"podCIDR 10.99.1.0/24 is outside the net-conf's Network 10.244.0.0/16", "--cluster-cidr"},
		},
		{
			name:   "podCIDR wider than Network",
			mutate: func(f *Facts) { f.Kube.Node.Spec.PodCIDRs = []string{"10.0.0.0/8"} },
			check:  "pod-cidr", status: Fail, want: []string{"podCIDR 10.0.0.0/8 is outside"},
		},
		{
			name:   "net-conf missing",
			mutate: func(f *Facts) { f.Kube.Config, f.Kube.ConfigErr = nil, fmt.Errorf("open: %w", errFileNotExist()) },
			check:  "config", status: Fail, want: []string{"no net-conf at /etc/kube-flannel/net-conf.json", "--net-config-path"},
			also: map[string]Status{"leases": Skip, "routes": Skip},
		},
		{
			name: "a peer without podCIDR, one not managed, one with bad annotations",
			mutate: func(f *Facts) {
				bad := flannelAnnotations("not-an-ip", mac3)
				f.Kube.Nodes = append(f.Kube.Nodes,
					kubeNodeObj("n3", "", nil),
					kubeNodeObj("n4", "10.244.4.0/24", map[string]string{}),
					kubeNodeObj("n5", "10.244.5.0/24", bad))
			},
			check: "leases", status: Warn,
			want: []string{"5 nodes, 2 publish leases (kube-subnet-manager=true), 2 without a weft or flannel agent", "1 without a podCIDR: n3", "1 with unusable annotations", `n5: annotation flannel.alpha.coreos.com/public-ip="not-an-ip"`},
			also: map[string]Status{"routes": OK},
		},
		{
			name: "two nodes publish one PublicIP",
			mutate: func(f *Facts) {
				f.Kube.Nodes = append(f.Kube.Nodes, kubeNodeObj("n3", "10.244.3.0/24", flannelAnnotations("192.0.2.2", mac3)))
			},
			check: "leases", status: Warn, want: []string{"192.0.2.2 is published by n2, n3"},
		},
		{
			name:   "list forbidden",
			mutate: func(f *Facts) { f.Kube.Nodes, f.Kube.NodesErr = nil, forbidden },
			check:  "leases", status: Fail, want: []string{"list nodes:", "cannot list", "nodes get, list, watch"},
			also: map[string]Status{"subnet-lease": Skip, "routes": Skip},
		},
		{
			name: "public-ip annotation changed",
			mutate: func(f *Facts) {
				f.Kube.Node.Annotations["flannel.alpha.coreos.com/public-ip"] = "192.0.2.99"
			},
			check: "annotations", status: Fail, want: []string{`public-ip="192.0.2.99", but this node's PublicIP is 192.0.2.1`, "restart weftd"},
		},
		{
			name: "public-ip-overwrite honoured",
			mutate: func(f *Facts) {
				f.Kube.Node.Annotations["flannel.alpha.coreos.com/public-ip-overwrite"] = "198.51.100.1"
			},
			check: "annotations", status: Fail, want: []string{"but flannel.alpha.coreos.com/public-ip-overwrite is 198.51.100.1"},
		},
		{
			name: "backend-type of another backend",
			mutate: func(f *Facts) {
				f.Kube.Node.Annotations["flannel.alpha.coreos.com/backend-type"] = "host-gw"
			},
			check: "annotations", status: Fail, want: []string{`backend-type="host-gw", but the net-conf's backend is vxlan`},
		},
		{
			name: "VtepMAC not the device's",
			mutate: func(f *Facts) {
				f.Kube.Node.Annotations["flannel.alpha.coreos.com/backend-data"] = fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, mac3)
			},
			check: "annotations", status: Fail, want: []string{"VtepMAC aa:00:00:00:00:03, but flannel.1 has aa:00:00:00:00:01"},
		},
		{
			name:   "not published",
			mutate: func(f *Facts) { f.Kube.Node.Annotations = nil },
			check:  "annotations", status: Fail, want: []string{`kube-subnet-manager="", not "true"`},
		},
		{
			name:   "NetworkUnavailable=True",
			mutate: func(f *Facts) { f.Kube.Node.Status.Conditions[1].Status = corev1.ConditionTrue },
			check:  "node-network", status: Fail, want: []string{"NetworkUnavailable=True", "pods are not scheduled here"},
		},
		{
			name:   "no NetworkUnavailable condition",
			mutate: func(f *Facts) { f.Kube.Node.Status.Conditions = nil },
			check:  "node-network", status: Warn, want: []string{"no NetworkUnavailable condition"},
		},
		{
			name: "no NetworkUnavailable condition, not weftd's job",
			mutate: func(f *Facts) {
				f.Kube.Node.Status.Conditions = nil
				f.Options.SetNodeNetworkUnavailable = false
			},
			check: "node-network", status: OK, want: []string{"--set-node-network-unavailable=false"},
		},
		{
			name: "route to a peer missing",
			mutate: func(f *Facts) {
				f.Node.Routes = f.Node.Routes[:2]
			},
			check: "routes", status: Fail, want: []string{"10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"},
		},
		{
			name: "a peer gone from the API, its route left",
			mutate: func(f *Facts) {
				f.Kube.Nodes = f.Kube.Nodes[:1]
			},
			check: "routes", status: Warn, want: []string{"10.244.2.0/24"},
		},
	})
}

func errFileNotExist() error { return fs.ErrNotExist }
