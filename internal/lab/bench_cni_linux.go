package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/readyfile"
	"github.com/weft-net/weft/internal/subnetenv"
)

// benchCNI times the CNI ADD of 100 pods, one at a time, through flannel's
// conflist run by weft's plugin (flannel -> bridge + host-local, portmap) in
// a node namespace of its own, and reports the plugin's size.
func benchCNI(ctx context.Context, _ *Lab, o BenchOptions) ([]Result, error) {
	r, err := BenchCNIAdd(ctx, o.Lab, 100)
	if err != nil {
		return nil, err
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	note := fmt.Sprintf("%d pods, one at a time", r.Pods)
	return []Result{
		{Section: "cni", Metric: "ADD median", Value: ms(r.Median), Unit: "ms", Note: note},
		{Section: "cni", Metric: "ADD p99", Value: ms(r.P99), Unit: "ms", Note: note},
		{Section: "cni", Metric: "plugin binary", Value: float64(r.PluginSize) / (1 << 20), Unit: "MiB", Note: "weft-cni"},
	}, nil
}

// CNIBenchResult is the CNI ADD latency of a node's pod network as a
// container runtime sees it, one pod at a time.
type CNIBenchResult struct {
	Lab        string // name of the lab the pods were made in
	Pods       int
	Median     time.Duration
	P99        time.Duration
	Max        time.Duration
	PluginSize int64 // bytes of the flannel (weft-cni) binary
}

// cniBenchEnv is the subnet.env that stands in for an agent on the bench's
// node.
var cniBenchEnv = subnetenv.Env{
	Network: netip.MustParsePrefix("10.244.0.0/16"),
	Subnet:  netip.MustParsePrefix("10.244.7.1/24"),
	MTU:     1450,
	IPMasq:  true,
}

// BenchCNIAdd adds pods pods to a node, timing each pod network ADD, then
// deletes them all and checks that nothing is left (no address held, no
// veth, no saved config). Pods are made exactly as Up makes them (libcni,
// flannel's conflist, the plugins in o's CNI bin dir), on the one node of a
// lab of its own under o's root: no underlay, no store and no agent, just
// a subnet.env written for the node. The lab is taken down before
// BenchCNIAdd returns; one left by a crash is found by `weft lab down
// --all`. o's name and node counts are ignored.
func BenchCNIAdd(ctx context.Context, o Options, pods int) (res CNIBenchResult, err error) {
	if pods < 1 || pods > 250 {
		return res, fmt.Errorf("cni bench: %d pods: want 1..250 (one /24)", pods)
	}
	o.Name, o.Dir, o.Nodes = "", "", 1
	if o, err = o.withDefaults(); err != nil {
		return res, err
	}
	o.PodsPerNode = 0 // made below, one at a time
	if err := needBinaries(o.CNIBinDir); err != nil {
		return res, err
	}
	st, err := os.Stat(filepath.Join(o.CNIBinDir, "flannel"))
	if err != nil {
		return res, err
	}
	res.Lab, res.PluginSize = o.Name, st.Size()

	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return res, fmt.Errorf("lab %s: %w", o.Name, err)
	}
	l := &Lab{State: plan(o), log: o.Log.With("lab", o.Name)}
	// The state file first, so that `weft lab down` finds what a crash
	// leaves. The lab does not become the current one: it is not the
	// user's.
	if err := l.save(); err != nil {
		return res, err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if derr := l.Down(dctx, DownOptions{}); derr != nil {
			err = errors.Join(err, fmt.Errorf("lab %s down: %w", l.Name, derr))
		}
	}()

	n := l.node(1)
	n.Subnet = cniBenchEnv.Subnet
	if err := addNS(ctx, n.NS); err != nil {
		return res, err
	}
	if err := os.MkdirAll(n.Dir, 0o755); err != nil {
		return res, err
	}
	if err := subnetenv.Write(n.SubnetFile, cniBenchEnv); err != nil {
		return res, err
	}
	// Vouch for the node as its weftd would.
	if err := readyfile.Mark(readyfile.Path(n.SubnetFile), time.Now().Add(time.Hour)); err != nil {
		return res, err
	}
	list, err := l.podNetwork(n)
	if err != nil {
		return res, err
	}

	var added []*Pod
	defer func() {
		for _, p := range added {
			err = errors.Join(err, l.detachPod(ctx, n, p, list))
		}
		if err == nil {
			err = cniNodeClean(n)
		}
	}()
	lat := make([]time.Duration, 0, pods)
	for j := 1; j <= pods; j++ {
		p := &Pod{
			Name:        fmt.Sprintf("n1p%d", j),
			NS:          fmt.Sprintf("%s-n1-p%d", l.Name, j),
			Node:        1,
			ContainerID: fmt.Sprintf("%s-n1-p%d", l.Name, j),
		}
		if err := l.newPodNS(ctx, n, p); err != nil {
			return res, err
		}
		start := time.Now()
		err := l.attachPod(ctx, n, p, list)
		lat = append(lat, time.Since(start))
		added = append(added, p)
		if err != nil {
			return res, err
		}
	}
	res.Pods = len(lat)
	res.Median, res.P99, res.Max = latencies(lat)
	return res, nil
}

// cniNodeClean reports any address host-local holds, veth or saved
// delegate config left on node n.
func cniNodeClean(n *Node) error {
	var ips, saved []string
	if ents, err := os.ReadDir(filepath.Join(n.CNIDataDir, podNetworkName)); err == nil {
		for _, e := range ents {
			// host-local also keeps "lock" and "last_reserved_ip.N".
			if _, err := netip.ParseAddr(e.Name()); err == nil {
				ips = append(ips, e.Name())
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if ents, err := os.ReadDir(filepath.Join(n.CNIDataDir, "flannel")); err == nil {
		for _, e := range ents {
			saved = append(saved, e.Name())
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	h, err := netlinkx.NewAt(nsPath(n.NS))
	if err != nil {
		return err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return err
	}
	var veths []string
	for _, link := range links {
		if link.Type() == "veth" {
			veths = append(veths, link.Attrs().Name)
		}
	}
	if len(ips)+len(veths)+len(saved) > 0 {
		return fmt.Errorf("node %d not clean after DEL: addresses %v, veths %v, saved configs %v", n.Index, ips, veths, saved)
	}
	return nil
}
