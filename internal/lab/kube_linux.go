package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	kubemanifest "github.com/weft-net/weft/deploy/kube"
	"github.com/weft-net/weft/internal/kubecp"
)

// The lab's Kubernetes side, for --store kube: kube-apiserver and
// kube-controller-manager run in the control namespace beside etcd, the lab
// registers each node as kubelet would, and each weftd runs with
// --kube-subnet-mgr and a token of the manifest's ServiceAccount, so that
// it has exactly the RBAC a user's cluster gives it.

const apiServerPort = 6443

// dialInNS dials from inside namespace name: the lab's addresses are not
// reachable from the root namespace, where the weft command runs.
func dialInNS(name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := ns.WithNetNSPath(nsPath(name), func(ns.NetNS) error {
			var d net.Dialer
			var err error
			conn, err = d.DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
}

// startKube starts the control plane in the control namespace, backed by
// the lab's etcd, and sets up what the agents need: the manifest's RBAC,
// a Node per lab node and a kubeconfig per agent.
func (l *Lab) startKube(ctx context.Context) error {
	// Node IPAM gives each Node a podCIDR per family of the cluster
	// network, as a dual-stack or IPv6-only cluster is set up.
	var cidrs []netip.Prefix
	if l.HasIPv4() {
		network, err := netip.ParsePrefix(l.Network)
		if err != nil {
			return fmt.Errorf("network %q: %w", l.Network, err)
		}
		cidrs = append(cidrs, network)
	}
	if l.HasIPv6() {
		network6, err := netip.ParsePrefix(l.IPv6Network)
		if err != nil {
			return fmt.Errorf("IPv6 network %q: %w", l.IPv6Network, err)
		}
		cidrs = append(cidrs, network6)
	}
	ctl := l.ControlNS
	cp, err := kubecp.Start(ctx, kubecp.Config{
		BinDir:       l.KubeBinDir,
		DataDir:      l.KubeDir,
		EtcdServers:  l.EtcdEndpoints(),
		Address:      netip.MustParseAddr(ctlAddr),
		Port:         apiServerPort,
		ClusterCIDRs: cidrs,
		// The lab's config leaves SubnetLen (IPv6SubnetLen) at flannel's
		// default.
		NodeCIDRMaskSizeIPv4: 24,
		NodeCIDRMaskSizeIPv6: 64,
		Command: func(bin string, args []string) *exec.Cmd {
			cmd := exec.Command("ip", append([]string{"netns", "exec", ctl, bin}, args...)...)
			// The servers outlive `weft lab up`, as the agents do; Down
			// finds them by namespace.
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			return cmd
		},
		DialContext: dialInNS(ctl),
		Logger:      l.log,
	})
	if err != nil {
		return fmt.Errorf("kubernetes control plane: %w", err)
	}
	l.APIServer = cp.URL()
	l.AdminKubeconfig = cp.AdminKubeconfig()
	for _, p := range cp.Processes() {
		if err := writePID(filepath.Join(l.KubeDir, p.Name+".pid"), p.PID); err != nil {
			return err
		}
	}
	if err := l.save(); err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cp.AdminConfig())
	if err != nil {
		return err
	}
	if err := kubemanifest.ApplyAgentRBAC(ctx, cs); err != nil {
		return err
	}
	if err := os.WriteFile(l.NetConfFile, []byte(l.networkConfig()+"\n"), 0o644); err != nil {
		return fmt.Errorf("net-conf.json: %w", err)
	}
	for i := range l.Nodes {
		n := &l.Nodes[i]
		if !n.Unregistered {
			if err := createNode(ctx, cs, n, nodeObject(n)); err != nil {
				return err
			}
		}
		n.Kubeconfig = filepath.Join(n.Dir, "kubeconfig")
		if _, err := cp.ServiceAccountKubeconfig(ctx, agentNamespace, agentServiceAccount, n.Kubeconfig, 24*time.Hour); err != nil {
			return fmt.Errorf("node %d: kubeconfig: %w", n.Index, err)
		}
	}
	return l.save()
}

// KubeClient is a client of the lab's API server with the admin's
// credentials, dialling from the control namespace.
func (l *Lab) KubeClient() (kubernetes.Interface, error) {
	cfg, err := l.kubeConfig()
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

func (l *Lab) kubeConfig() (*rest.Config, error) {
	if l.Store != StoreKube {
		return nil, fmt.Errorf("lab %s keeps its leases in etcd, not in the Kubernetes API", l.Name)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", l.AdminKubeconfig)
	if err != nil {
		return nil, fmt.Errorf("lab %s: admin kubeconfig: %w", l.Name, err)
	}
	cfg.Dial = dialInNS(l.ControlNS)
	return cfg, nil
}

// RegisterNode creates node i's Node object, as its kubelet would on
// start: its InternalIP and the OS label the DaemonSet's affinity wants.
func (l *Lab) RegisterNode(ctx context.Context, i int) error {
	return l.CreateNode(ctx, i, l.NodeObject(i))
}

// NodeObject is the Node object RegisterNode creates for node i, for a
// caller that wants to register a different one (CreateNode).
func (l *Lab) NodeObject(i int) *corev1.Node { return nodeObject(l.node(i)) }

// CreateNode registers node as node i's Node object; node's name must be
// node i's.
func (l *Lab) CreateNode(ctx context.Context, i int, node *corev1.Node) error {
	n := l.node(i)
	if node.Name != n.Name {
		return fmt.Errorf("node %d is Node %s, not %s", i, n.Name, node.Name)
	}
	cs, err := l.KubeClient()
	if err != nil {
		return err
	}
	if err := createNode(ctx, cs, n, node); err != nil {
		return err
	}
	n.Unregistered = false
	return l.save()
}

func nodeObject(n *Node) *corev1.Node {
	// As kubelet's registration, with the status in the create: the
	// controller-manager writes the podCIDR as soon as the Node exists.
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:   n.Name,
			Labels: map[string]string{"kubernetes.io/os": "linux", "kubernetes.io/hostname": n.Name},
		},
		Status: corev1.NodeStatus{Addresses: nodeAddresses(n)},
	}
}

// nodeAddresses are the addresses kubelet reports for n: its underlay
// address of each family, and its name.
func nodeAddresses(n *Node) []corev1.NodeAddress {
	as := []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.PublicIP.String()}}
	if n.PublicIPv6.IsValid() {
		as = append(as, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: n.PublicIPv6.String()})
	}
	return append(as, corev1.NodeAddress{Type: corev1.NodeHostName, Address: n.Name})
}

func createNode(ctx context.Context, cs kubernetes.Interface, n *Node, node *corev1.Node) error {
	_, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("node %d: register Node %s: %w", n.Index, n.Name, err)
	}
	return nil
}

// DeleteNode deletes node i's Node object, as when a node leaves the cluster.
func (l *Lab) DeleteNode(ctx context.Context, i int) error {
	cs, err := l.KubeClient()
	if err != nil {
		return err
	}
	n := l.node(i)
	if err := cs.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("node %d: delete Node %s: %w", i, n.Name, err)
	}
	n.Unregistered = true
	return l.save()
}

// Where the agents' ServiceAccount lives: the manifest's.
const (
	agentNamespace      = kubemanifest.Namespace
	agentServiceAccount = kubemanifest.ServiceAccount
)
