package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/coreos/go-iptables/iptables"
	"sigs.k8s.io/knftables"

	"github.com/weft-net/weft/internal/subnetenv"
)

// cniIn runs f on a thread switched into namespace name. Plugins that libcni
// starts from there inherit the namespace, as they would on a real node
// where the runtime itself runs in the host namespace.
func cniIn(name string, f func() error) error {
	return ns.WithNetNSPath(nsPath(name), func(ns.NetNS) error { return f() })
}

func (l *Lab) cniConfig(n *Node) *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{l.CNIBinDir}, n.CNICache, l.cniExec)
}

// addPod creates the pod's namespace and attaches it to node n the way a
// container runtime does: libcni ADD of the pod network and of loopback.
func (l *Lab) addPod(ctx context.Context, n *Node, p *Pod) error {
	list, err := l.podNetwork(n)
	if err != nil {
		return fmt.Errorf("pod %s: %w", p.NS, err)
	}
	if err := l.newPodNS(ctx, n, p); err != nil {
		return err
	}
	if err := l.attachPod(ctx, n, p, list); err != nil {
		return err
	}
	l.log.Info("pod added", "pod", p.NS, "ip", p.IP)
	return l.save()
}

// podNetwork renders node n's pod conflist from its subnet.env, writes it to
// the node's directory (for a person to run by hand) and parses it.
func (l *Lab) podNetwork(n *Node) (*libcni.NetworkConfigList, error) {
	env, err := subnetenv.Read(n.SubnetFile)
	if err != nil {
		return nil, err
	}
	conf, err := podConflist(env, n, l.portmapBackend())
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(n.Dir+"/"+podNetworkName+".conflist", conf, 0o644); err != nil {
		return nil, err
	}
	list, err := libcni.ConfListFromBytes(conf)
	if err != nil {
		return nil, fmt.Errorf("pod conflist: %w", err)
	}
	return list, nil
}

// portmapBackend is the netfilter backend portmap picks on this machine
// when its config names none, found once per Lab by portmap's own test
// (plugins' pkg/utils): iptables when it can list a chain, else nftables
// when knftables can run, else iptables.
func (l *Lab) portmapBackend() string {
	l.portmapOnce.Do(func() {
		l.portmap = "iptables"
		if ipt, err := iptables.NewWithProtocol(iptables.ProtocolIPv4); err == nil {
			if _, err := ipt.ChainExists("filter", "INPUT"); err == nil {
				return
			}
		}
		if _, err := knftables.New(knftables.IPv4Family, "supports_nftables_test"); err == nil {
			l.portmap = "nftables"
		}
	})
	return l.portmap
}

// newPodNS makes the pod's namespace, with lo brought up by the loopback
// plugin as runtimes do.
func (l *Lab) newPodNS(ctx context.Context, n *Node, p *Pod) error {
	lo, err := libcni.ConfListFromBytes(loopbackConflist())
	if err != nil {
		return fmt.Errorf("loopback conflist: %w", err)
	}
	if err := ip(ctx, "netns", "add", p.NS); err != nil {
		return err
	}
	if err := l.noDAD(p.NS); err != nil {
		return err
	}
	cni := l.cniConfig(n)
	err = cniIn(n.NS, func() error {
		rt := &libcni.RuntimeConf{ContainerID: p.ContainerID, NetNS: nsPath(p.NS), IfName: "lo"}
		_, err := cni.AddNetworkList(ctx, lo, rt)
		return err
	})
	if err != nil {
		return fmt.Errorf("pod %s: loopback: %w", p.NS, err)
	}
	return nil
}

// attachPod runs the pod network's ADD for p on node n and records the
// address it got.
func (l *Lab) attachPod(ctx context.Context, n *Node, p *Pod, list *libcni.NetworkConfigList) error {
	cni := l.cniConfig(n)
	var res types.Result
	err := cniIn(n.NS, func() error {
		var err error
		res, err = cni.AddNetworkList(ctx, list, l.podRuntime(p))
		return err
	})
	if err != nil {
		return fmt.Errorf("pod %s: CNI ADD on node %d: %w", p.NS, n.Index, err)
	}
	p.IP, p.IP6, err = podIPs(res)
	if err != nil {
		return fmt.Errorf("pod %s: %w", p.NS, err)
	}
	if l.HasIPv4() && !p.IP.IsValid() || l.HasIPv6() && !p.IP6.IsValid() {
		return fmt.Errorf("pod %s: CNI result has addresses %s %s, want one of each family of the lab (%s)", p.NS, p.IP, p.IP6, l.familyName())
	}
	return nil
}

// detachPod runs the pod network's DEL for p on node n.
func (l *Lab) detachPod(ctx context.Context, n *Node, p *Pod, list *libcni.NetworkConfigList) error {
	cni := l.cniConfig(n)
	err := cniIn(n.NS, func() error { return cni.DelNetworkList(ctx, list, l.podRuntime(p)) })
	if err != nil {
		return fmt.Errorf("pod %s: CNI DEL on node %d: %w", p.NS, n.Index, err)
	}
	return nil
}

func (l *Lab) podRuntime(p *Pod) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: p.ContainerID, NetNS: nsPath(p.NS), IfName: "eth0"}
}

// podIPs are the IPv4 and IPv6 addresses the plugin chain gave eth0
// (invalid for a family it gave none).
func podIPs(res types.Result) (v4, v6 netip.Addr, err error) {
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return v4, v6, fmt.Errorf("CNI result: %w", err)
	}
	for _, c := range r.IPs {
		a, ok := netip.AddrFromSlice(c.Address.IP)
		switch a = a.Unmap(); {
		case !ok:
		case a.Is4() && !v4.IsValid():
			v4 = a
		case a.Is6() && !v6.IsValid():
			v6 = a
		}
	}
	if !v4.IsValid() && !v6.IsValid() {
		return v4, v6, fmt.Errorf("CNI result has no address: %v", r)
	}
	return v4, v6, nil
}

// AddPod attaches one more pod to node i and returns it.
func (l *Lab) AddPod(ctx context.Context, i int) (Pod, error) {
	n := l.node(i)
	j := len(n.Pods) + 1
	p := Pod{
		Name:        fmt.Sprintf("n%dp%d", i, j),
		NS:          fmt.Sprintf("%s-n%d-p%d", l.Name, i, j),
		Node:        i,
		ContainerID: fmt.Sprintf("%s-n%d-p%d", l.Name, i, j),
	}
	n.Pods = append(n.Pods, p)
	if err := l.addPod(ctx, n, &n.Pods[j-1]); err != nil {
		return Pod{}, err
	}
	return n.Pods[j-1], nil
}
