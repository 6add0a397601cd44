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

	"github.com/weft-net/weft/internal/subnetenv"
)

// cniIn runs f on a thread switched into namespace name. Plugins that libcni
// starts from there inherit the namespace, as they would on a real node
// where the runtime itself runs in the host namespace.
func cniIn(name string, f func() error) error {
	return ns.WithNetNSPath(nsPath(name), func(ns.NetNS) error { return f() })
}

func (l *Lab) cniConfig(n *Node) *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{l.CNIBinDir}, n.CNICache, nil)
}

// addPod creates the pod's namespace and attaches it to node n the way a
// container runtime does: libcni ADD of the pod network and of loopback.
func (l *Lab) addPod(ctx context.Context, n *Node, p *Pod) error {
	env, err := subnetenv.Read(n.SubnetFile)
	if err != nil {
		return fmt.Errorf("pod %s: %w", p.NS, err)
	}
	conf, err := podConflist(env, n)
	if err != nil {
		return err
	}
	if err := os.WriteFile(n.Dir+"/"+podNetworkName+".conflist", conf, 0o644); err != nil {
		return err
	}
	list, err := libcni.ConfListFromBytes(conf)
	if err != nil {
		return fmt.Errorf("pod conflist: %w", err)
	}
	lo, err := libcni.ConfListFromBytes(loopbackConflist())
	if err != nil {
		return fmt.Errorf("loopback conflist: %w", err)
	}
	if err := ip(ctx, "netns", "add", p.NS); err != nil {
		return err
	}
	cni := l.cniConfig(n)
	var res types.Result
	err = cniIn(n.NS, func() error {
		rt := &libcni.RuntimeConf{ContainerID: p.ContainerID, NetNS: nsPath(p.NS), IfName: "lo"}
		if _, err := cni.AddNetworkList(ctx, lo, rt); err != nil {
			return fmt.Errorf("loopback: %w", err)
		}
		rt = &libcni.RuntimeConf{ContainerID: p.ContainerID, NetNS: nsPath(p.NS), IfName: "eth0"}
		var err error
		res, err = cni.AddNetworkList(ctx, list, rt)
		return err
	})
	if err != nil {
		return fmt.Errorf("pod %s: CNI ADD on node %d: %w", p.NS, n.Index, err)
	}
	addr, err := podIP(res)
	if err != nil {
		return fmt.Errorf("pod %s: %w", p.NS, err)
	}
	p.IP = addr
	l.log.Info("pod added", "pod", p.NS, "ip", addr)
	return l.save()
}

// podIP is the IPv4 address the plugin chain gave eth0.
func podIP(res types.Result) (netip.Addr, error) {
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("CNI result: %w", err)
	}
	for _, c := range r.IPs {
		if a, ok := netip.AddrFromSlice(c.Address.IP); ok && a.Unmap().Is4() {
			return a.Unmap(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("CNI result has no IPv4 address: %v", r)
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
