package cnirig

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/weft-net/weft/internal/subnetenv"
)

// BenchResult is the CNI ADD latency of a node's conflist (flannel ->
// bridge + host-local, then portmap), as a runtime sees it, one pod at a
// time.
type BenchResult struct {
	Pods       int
	Median     time.Duration
	P99        time.Duration
	Max        time.Duration
	PluginSize int64 // bytes of the flannel (weft-cni) binary in BinDir
}

func (r BenchResult) String() string {
	return fmt.Sprintf("CNI ADD x%d: median %v, p99 %v, max %v; plugin binary %.1f MiB",
		r.Pods, r.Median.Round(100*time.Microsecond), r.P99.Round(100*time.Microsecond),
		r.Max.Round(100*time.Microsecond), float64(r.PluginSize)/(1<<20))
}

// BenchAdd adds pods pods to a fresh node namespace, timing each ADD, then
// deletes them all and checks that nothing is left (no address held, no
// veth, no saved config). binDir holds flannel (weft-cni), bridge,
// host-local, portmap (see Build, or the Makefile's bin/cni).
func BenchAdd(ctx context.Context, binDir string, pods int) (res BenchResult, err error) {
	if pods < 1 || pods > 250 {
		return res, fmt.Errorf("bench: %d pods: want 1..250 (one /24)", pods)
	}
	st, err := os.Stat(filepath.Join(binDir, "flannel"))
	if err != nil {
		return res, fmt.Errorf("bench: plugin: %w", err)
	}
	res.PluginSize = st.Size()

	dir, err := os.MkdirTemp("", "weft-cni-bench-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	env := subnetenv.Env{
		Network: netip.MustParsePrefix("10.244.0.0/16"),
		Subnet:  netip.MustParsePrefix("10.244.7.1/24"),
		MTU:     1450,
		IPMasq:  true,
	}
	node, err := NewNode(dir, binDir, env, "1.0.0")
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, node.Close()) }()

	var added []*Pod
	defer func() {
		for _, p := range added {
			err = errors.Join(err, node.Del(ctx, p), p.Close())
		}
		if err != nil {
			return
		}
		err = node.CheckEmpty()
	}()
	lat := make([]time.Duration, 0, pods)
	for range pods {
		p, err := NewPod()
		if err != nil {
			return res, err
		}
		start := time.Now()
		_, err = node.Add(ctx, p)
		lat = append(lat, time.Since(start))
		added = append(added, p)
		if err != nil {
			return res, fmt.Errorf("bench: ADD pod %d: %w", len(added), err)
		}
	}
	slices.Sort(lat)
	res.Pods = len(lat)
	res.Median = lat[len(lat)/2]
	res.P99 = lat[(len(lat)*99+99)/100-1]
	res.Max = lat[len(lat)-1]
	return res, nil
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
