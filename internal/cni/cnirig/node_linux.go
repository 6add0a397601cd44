package cnirig

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/readyfile"
	"github.com/weft-net/weft/internal/subnetenv"
)

// NetworkName is flannel's CNI network name.
const NetworkName = "cbr0"

// Node is a container runtime's view of one node: its own network
// namespace (where the bridge lives), its subnet.env, the plugin's and
// host-local's data dirs and the conflist, all under Dir.
type Node struct {
	Dir        string
	SubnetFile string // Dir/subnet.env
	DataDir    string // the plugin's saved delegate configs
	IPAMDir    string // host-local's allocations
	ConfDir    string // holds 10-flannel.conflist
	CacheDir   string // libcni's result cache
	BinDir     string // CNI_PATH
	Env        subnetenv.Env
	NS         ns.NetNS
	List       *libcni.NetworkConfigList
	CNI        *libcni.CNIConfig
}

// Conflist is flannel's conflist (flannel plugin delegating to bridge with
// hairpin and default gateway, then portmap) with the node's own file
// locations, for nodes that share one filesystem.
func Conflist(cniVersion, subnetFile, dataDir, ipamDir string) ([]byte, error) {
	return json.Marshal(map[string]any{
		"name":       NetworkName,
		"cniVersion": cniVersion,
		"plugins": []any{
			map[string]any{
				"type":       "flannel",
				"subnetFile": subnetFile,
				"dataDir":    dataDir,
				"ipam":       map[string]any{"dataDir": ipamDir},
				"delegate":   map[string]any{"hairpinMode": true, "isDefaultGateway": true},
			},
			map[string]any{
				"type":         "portmap",
				"capabilities": map[string]any{"portMappings": true},
			},
		},
	})
}

// NewNode makes a node namespace and writes env and the conflist under dir.
// binDir holds the plugins (see Build). Close removes the namespace.
func NewNode(dir, binDir string, env subnetenv.Env, cniVersion string) (*Node, error) {
	n := &Node{
		Dir:        dir,
		SubnetFile: filepath.Join(dir, "subnet.env"),
		DataDir:    filepath.Join(dir, "flannel"),
		IPAMDir:    filepath.Join(dir, "ipam"),
		ConfDir:    filepath.Join(dir, "net.d"),
		CacheDir:   filepath.Join(dir, "cache"),
		BinDir:     binDir,
		Env:        env,
	}
	if err := subnetenv.Write(n.SubnetFile, env); err != nil {
		return nil, err
	}
	// Stand in for a ready agent, as weftd vouches for its node.
	if err := readyfile.Mark(readyfile.Path(n.SubnetFile), time.Now().Add(time.Hour)); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(n.ConfDir, 0o755); err != nil {
		return nil, err
	}
	conf, err := Conflist(cniVersion, n.SubnetFile, n.DataDir, n.IPAMDir)
	if err != nil {
		return nil, err
	}
	if err := n.SetConflist(conf); err != nil {
		return nil, err
	}
	n.CNI = libcni.NewCNIConfigWithCacheDir([]string{binDir}, n.CacheDir, nil)
	if n.NS, err = testutils.NewNS(); err != nil {
		return nil, fmt.Errorf("create node netns: %w", err)
	}
	// Pods reach each other through the bridge; lo up as on a real host.
	h, err := netlinkx.NewAt(n.NS.Path())
	if err != nil {
		n.Close()
		return nil, err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("node netns lo: %w", err)
	}
	return n, nil
}

// SetConflist replaces the node's conflist (in ConfDir and in List).
func (n *Node) SetConflist(conf []byte) error {
	list, err := libcni.NetworkConfFromBytes(conf)
	if err != nil {
		return fmt.Errorf("parse conflist: %w", err)
	}
	if err := os.WriteFile(filepath.Join(n.ConfDir, "10-flannel.conflist"), conf, 0o644); err != nil {
		return err
	}
	n.List = list
	return nil
}

// Close removes the node's namespace (and with it the bridge and the host
// ends of any veths). The files under Dir are the caller's.
func (n *Node) Close() error {
	if n.NS == nil {
		return nil
	}
	n.NS.Close()
	err := testutils.UnmountNS(n.NS)
	n.NS = nil
	return err
}

// Do runs f with the calling goroutine's thread in the node's namespace;
// processes f starts are forked there, as a runtime's plugins are.
func (n *Node) Do(f func() error) error {
	return n.NS.Do(func(ns.NetNS) error { return f() })
}

// Pod is a pod sandbox: a network namespace and a container ID.
type Pod struct {
	ID     string
	IfName string
	NS     ns.NetNS
}

// NewPod makes a pod namespace. Close removes it.
func NewPod() (*Pod, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	pns, err := testutils.NewNS()
	if err != nil {
		return nil, fmt.Errorf("create pod netns: %w", err)
	}
	return &Pod{ID: "pod-" + hex.EncodeToString(b[:]), IfName: "eth0", NS: pns}, nil
}

// Close removes the pod's namespace.
func (p *Pod) Close() error {
	if p.NS == nil {
		return nil
	}
	p.NS.Close()
	err := testutils.UnmountNS(p.NS)
	p.NS = nil
	return err
}

func (n *Node) rt(p *Pod) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: p.ID, NetNS: p.NS.Path(), IfName: p.IfName}
}

// Add runs the conflist's ADD for p, as a runtime on the node would.
func (n *Node) Add(ctx context.Context, p *Pod) (*current.Result, error) {
	var res *current.Result
	err := n.Do(func() error {
		r, err := n.CNI.AddNetworkList(ctx, n.List, n.rt(p))
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	return res, err
}

// Check runs the conflist's CHECK for p (needs cniVersion 0.4.0 or later).
func (n *Node) Check(ctx context.Context, p *Pod) error {
	return n.Do(func() error { return n.CNI.CheckNetworkList(ctx, n.List, n.rt(p)) })
}

// Del runs the conflist's DEL for p.
func (n *Node) Del(ctx context.Context, p *Pod) error {
	return n.Do(func() error { return n.CNI.DelNetworkList(ctx, n.List, n.rt(p)) })
}

// AllocatedIPs lists the addresses host-local holds on the node.
func (n *Node) AllocatedIPs() ([]netip.Addr, error) {
	ents, err := os.ReadDir(filepath.Join(n.IPAMDir, NetworkName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, e := range ents {
		// host-local also keeps "lock" and "last_reserved_ip.N".
		if a, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, a)
		}
	}
	return out, nil
}

// Veths lists the veth interfaces in the node's namespace.
func (n *Node) Veths() ([]string, error) {
	h, err := netlinkx.NewAt(n.NS.Path())
	if err != nil {
		return nil, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range links {
		if l.Type() == "veth" {
			out = append(out, l.Attrs().Name)
		}
	}
	return out, nil
}

// SavedConfigs lists the delegate configs the plugin keeps.
func (n *Node) SavedConfigs() ([]string, error) {
	ents, err := os.ReadDir(n.DataDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out, nil
}

// CheckEmpty reports any address, veth or saved config left on the node.
func (n *Node) CheckEmpty() error {
	ips, err := n.AllocatedIPs()
	if err != nil {
		return err
	}
	veths, err := n.Veths()
	if err != nil {
		return err
	}
	saved, err := n.SavedConfigs()
	if err != nil {
		return err
	}
	if len(ips)+len(veths)+len(saved) > 0 {
		return fmt.Errorf("node not clean after DEL: addresses %v, veths %v, saved configs %v", ips, veths, saved)
	}
	return nil
}
