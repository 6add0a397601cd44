package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weft-net/weft/internal/cni"
	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/readyfile"
	"github.com/weft-net/weft/internal/subnetenv"
)

// The CNI ADD targets (issue 11), for each of one pod at a time and
// cniBatch pods at once.
const (
	targetCNIMedian = 40 * time.Millisecond
	targetCNIP99    = 80 * time.Millisecond
	cniBatch        = 10
	// cniExecPods are added one at a time with the bridge plugin exec'd
	// (execDelegate), as flannel's plugin runs it, for the comparison.
	cniExecPods = 20
)

// benchCNI times the CNI ADD of 100 pods one at a time and of 100 more,
// 10 at once, through flannel's conflist run by weft's plugin (flannel ->
// bridge + host-local, in process; portmap) in a node namespace of its
// own, then of 20 more with the bridge and host-local binaries exec'd; it
// shows where a one-at-a-time ADD's time goes and reports the plugin's
// size.
func benchCNI(ctx context.Context, _ *Lab, o BenchOptions) ([]Result, error) {
	r, err := BenchCNIAdd(ctx, o.Lab, 100)
	if err != nil {
		return nil, err
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	target := func(d, t time.Duration) string {
		return fmt.Sprintf("%s target ≤ %s", verdict(ms(d), ms(t), true), t)
	}
	one := fmt.Sprintf("%d pods, one at a time", r.Pods)
	batch := fmt.Sprintf("%d pods, %d at once", r.BatchPods, r.Batch)
	out := []Result{
		{Section: "cni", Metric: "ADD median", Value: ms(r.Median), Unit: "ms", Note: target(r.Median, targetCNIMedian) + "; " + one},
		{Section: "cni", Metric: "ADD p99", Value: ms(r.P99), Unit: "ms", Note: target(r.P99, targetCNIP99) + "; " + one},
		{Section: "cni", Metric: fmt.Sprintf("ADD median, %d at once", r.Batch), Value: ms(r.BatchMedian), Unit: "ms", Note: target(r.BatchMedian, targetCNIMedian) + "; " + batch},
		{Section: "cni", Metric: fmt.Sprintf("ADD p99, %d at once", r.Batch), Value: ms(r.BatchP99), Unit: "ms", Note: target(r.BatchP99, targetCNIP99) + "; " + batch},
		{Section: "cni", Metric: fmt.Sprintf("  exec floor, %d at once", r.Batch), Value: ms(r.FloorMedian), Unit: "ms",
			Note: fmt.Sprintf("median, p99 %.1f ms; the same batches exec'ing the conflist's plugins (VERSION) and nothing else: this machine's floor for the two lines above", ms(r.FloorP99))},
	}
	if r.ExecPods > 0 {
		out = append(out, Result{Section: "cni", Metric: "ADD median, bridge binary", Value: ms(r.ExecMedian), Unit: "ms",
			Note: fmt.Sprintf("p99 %.1f ms; %d pods one at a time, execDelegate: the bridge and host-local binaries exec'd, as flannel's plugin does (%.2fx the in-process median)",
				ms(r.ExecP99), r.ExecPods, ms(r.ExecMedian)/max(ms(r.Median), 1e-9))})
	}
	for _, s := range r.Split {
		note := "median; " + s.Note
		if s.BatchMedian > 0 {
			note = fmt.Sprintf("median; %d at once %.2f ms; %s", r.Batch, ms(s.BatchMedian), s.Note)
		}
		out = append(out, Result{Section: "cni", Metric: "  " + s.Name, Value: ms(s.Median), Unit: "ms", Note: note})
	}
	return append(out, Result{Section: "cni", Metric: "plugin binary", Value: float64(r.PluginSize) / (1 << 20), Unit: "MiB", Note: "weft-cni"}), nil
}

// CNIBenchResult is the CNI ADD latency of a node's pod network as a
// container runtime sees it, one pod at a time and Batch pods at once.
type CNIBenchResult struct {
	Lab  string // name of the lab the pods were made in
	Pods int    // added one at a time
	// Median, P99 and Max are of the pods added one at a time.
	Median, P99, Max time.Duration
	Batch            int // pods added at once
	BatchPods        int // pods added Batch at a time
	// BatchMedian, BatchP99 and BatchMax are of the pods added Batch at
	// once, each timed from the start of its batch.
	BatchMedian, BatchP99, BatchMax time.Duration
	// FloorMedian and FloorP99 are of the same batches doing nothing but
	// exec each of the conflist's plugins in turn (VERSION), each timed
	// from the start of its batch: what Batch ADDs at once cost here
	// before any plugin does its work.
	FloorMedian, FloorP99 time.Duration
	// ExecMedian and ExecP99 are of ExecPods more pods added one at a
	// time with weft-cni exec'ing the bridge plugin (execDelegate).
	ExecPods            int
	ExecMedian, ExecP99 time.Duration
	// Split is where a one-at-a-time ADD's time goes, in order, each
	// step with its median in the batches beside it.
	Split      []CNIStep
	PluginSize int64 // bytes of the flannel (weft-cni) binary
}

// CNIStep is one part of an ADD: its median over the pods added one at a
// time, or over runs of its own where Note says so, and over the pods
// added Batch at once (BatchMedian; 0 for a step timed alone).
type CNIStep struct {
	Name        string
	Median      time.Duration
	BatchMedian time.Duration
	Note        string
}

// cniBenchEnv is the subnet.env that stands in for an agent on the bench's
// node.
var cniBenchEnv = subnetenv.Env{
	Network: netip.MustParsePrefix("10.244.0.0/16"),
	Subnet:  netip.MustParsePrefix("10.244.7.1/24"),
	MTU:     1450,
	IPMasq:  true,
}

// BenchCNIAdd adds pods pods to a node one at a time, then pods more
// (rounded down to whole batches) cniBatch at once, timing each pod
// network ADD, then deletes them all and checks that nothing is left (no
// address held, no veth, no saved config). Pods are made exactly as Up
// makes them (libcni, flannel's conflist, the plugins in o's CNI bin dir),
// on the one node of a lab of its own under o's root: no underlay, no
// store and no agent, just a subnet.env written for the node. The plugins'
// execs are timed, and weft-cni's own steps read from its timings
// (cni.TimingsEnv); host-local and a bare plugin exec are timed alone.
// The lab is taken down before BenchCNIAdd returns; one left by a crash is
// found by `weft lab down --all`. o's name and node counts are ignored.
func BenchCNIAdd(ctx context.Context, o Options, pods int) (res CNIBenchResult, err error) {
	if pods < 1 || 2*pods+cniExecPods > 250 {
		return res, fmt.Errorf("cni bench: %d pods: want 1..%d (twice that and %d more must fit one /24)", pods, (250-cniExecPods)/2, cniExecPods)
	}
	o.Name, o.Dir, o.Nodes = "", "", 1
	if o, err = o.withDefaults(); err != nil {
		return res, err
	}
	o.PodsPerNode = 0 // made below
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
	timer := &execTimer{RawExec: invoke.RawExec{Stderr: os.Stderr}, timings: filepath.Join(o.Dir, "cni-timings.jsonl")}
	l := &Lab{State: plan(o), log: o.Log.With("lab", o.Name), cniExec: timer}
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

	var (
		mu    sync.Mutex
		added []*Pod
	)
	defer func() {
		for _, p := range added {
			err = errors.Join(err, l.detachPod(ctx, n, p, list))
		}
		if err == nil {
			err = cniNodeClean(n)
		}
	}()
	newPod := func(j int) (*Pod, error) {
		p := &Pod{
			Name:        fmt.Sprintf("n1p%d", j),
			NS:          fmt.Sprintf("%s-n1-p%d", l.Name, j),
			Node:        1,
			ContainerID: fmt.Sprintf("%s-n1-p%d", l.Name, j),
		}
		return p, l.newPodNS(ctx, n, p)
	}
	// attach adds p with pod network pl, timed from start, and keeps it
	// for the DEL at the end even when ADD fails (DEL then cleans up what
	// ADD left).
	attach := func(p *Pod, pl *libcni.NetworkConfigList, start time.Time) (time.Duration, error) {
		err := l.attachPod(ctx, n, p, pl)
		d := time.Since(start)
		mu.Lock()
		added = append(added, p)
		mu.Unlock()
		return d, err
	}
	// oneAtATime adds count new pods, numbered from first, with pod
	// network pl, one after another, and returns their times.
	oneAtATime := func(pl *libcni.NetworkConfigList, first, count int) ([]time.Duration, error) {
		lat := make([]time.Duration, 0, count)
		for j := first; j < first+count; j++ {
			p, err := newPod(j)
			if err != nil {
				return nil, err
			}
			d, err := attach(p, pl, time.Now())
			if err != nil {
				return nil, err
			}
			lat = append(lat, d)
		}
		return lat, nil
	}

	lat, err := oneAtATime(list, 1, pods)
	if err != nil {
		return res, err
	}
	onePods := slices.Clone(added)
	res.Pods = len(lat)
	res.Median, res.P99, res.Max = latencies(slices.Clone(lat)) // sorts; cniSplit pairs lat with its pods

	res.Batch = cniBatch
	var (
		batchPods []*Pod
		batchLat  []time.Duration
	)
	for b := 0; b < pods/cniBatch; b++ {
		batch := make([]*Pod, cniBatch)
		for i := range batch {
			if batch[i], err = newPod(pods + b*cniBatch + i + 1); err != nil {
				return res, err
			}
		}
		ds, err := atOnce(cniBatch, func(i int, start time.Time) (time.Duration, error) { return attach(batch[i], list, start) })
		if err != nil {
			return res, err
		}
		batchPods, batchLat = append(batchPods, batch...), append(batchLat, ds...)
	}
	if res.BatchPods = len(batchLat); res.BatchPods > 0 {
		res.BatchMedian, res.BatchP99, res.BatchMax = latencies(slices.Clone(batchLat))
	}
	if res.Split, err = cniSplit(ctx, timer, l, n, onePods, lat, batchPods, batchLat); err != nil {
		return res, err
	}
	if res.FloorMedian, res.FloorP99, err = benchExecFloor(ctx, l, list, cniBatch, pods/cniBatch); err != nil {
		return res, err
	}

	// The same, one at a time, with the bridge binary doing the work.
	execList, err := withExecDelegate(list)
	if err != nil {
		return res, err
	}
	execLat, err := oneAtATime(execList, 2*pods+1, cniExecPods)
	if err != nil {
		return res, err
	}
	res.ExecPods = len(execLat)
	res.ExecMedian, res.ExecP99, _ = latencies(execLat)
	return res, nil
}

// withExecDelegate is list with weft-cni told to exec its delegate
// (execDelegate), as flannel's plugin always does.
func withExecDelegate(list *libcni.NetworkConfigList) (*libcni.NetworkConfigList, error) {
	var l map[string]any
	if err := json.Unmarshal(list.Bytes, &l); err != nil {
		return nil, fmt.Errorf("cni bench: conflist: %w", err)
	}
	plugins, _ := l["plugins"].([]any)
	if len(plugins) == 0 {
		return nil, fmt.Errorf("cni bench: conflist without plugins")
	}
	plugins[0].(map[string]any)["execDelegate"] = true
	data, err := json.Marshal(l)
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromBytes(data)
}

// execTimer runs CNI plugins as libcni's default does, timing every exec
// by plugin and container, and hands weft-cni the file to append its own
// timings to.
type execTimer struct {
	invoke.RawExec
	version.PluginDecoder
	timings string // cni.TimingsEnv

	mu    sync.Mutex
	execs map[string]map[string]time.Duration // ADD: container ID -> plugin -> time
}

func (e *execTimer) ExecPlugin(ctx context.Context, path string, stdin []byte, environ []string) ([]byte, error) {
	var cmd, id string
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "CNI_COMMAND="); ok {
			cmd = v
		} else if v, ok := strings.CutPrefix(kv, "CNI_CONTAINERID="); ok {
			id = v
		}
	}
	environ = append(slices.Clip(environ), cni.TimingsEnv+"="+e.timings)
	start := time.Now()
	out, err := e.RawExec.ExecPlugin(ctx, path, stdin, environ)
	d := time.Since(start)
	if cmd == "ADD" {
		e.mu.Lock()
		if e.execs == nil {
			e.execs = map[string]map[string]time.Duration{}
		}
		if e.execs[id] == nil {
			e.execs[id] = map[string]time.Duration{}
		}
		e.execs[id][filepath.Base(path)] += d
		e.mu.Unlock()
	}
	return out, err
}

// cniSplit tells where the time of the one-at-a-time ADDs went (their
// total times are lat, in the order of pods), and beside each step where
// the time of the batched ones went (batchLat, of batchPods): libcni's
// exec of weft-cni, of it weft-cni's own steps and the rest (process
// start and exit), the portmap exec and what libcni spends between; then,
// timed alone, the host-local IPAM the bridge execs and the exec of a
// plugin that does nothing (loopback VERSION), the floor of every exec
// here.
func cniSplit(ctx context.Context, e *execTimer, l *Lab, n *Node, pods []*Pod, lat []time.Duration, batchPods []*Pod, batchLat []time.Duration) ([]CNIStep, error) {
	own, order, err := readCNITimings(e.timings)
	if err != nil {
		return nil, err
	}
	one, err := e.steps(own, pods, lat)
	if err != nil {
		return nil, err
	}
	batched, err := e.steps(own, batchPods, batchLat)
	if err != nil {
		return nil, err
	}
	var out []CNIStep
	for _, name := range append([]string{"exec flannel (weft-cni)"}, append(order, "weft-cni process start, exit", "exec portmap", "libcni itself")...) {
		note := fmt.Sprintf("%d ADDs", len(one[name]))
		if strings.HasPrefix(name, "weft-cni ") {
			note += "; part of exec flannel"
		}
		switch name {
		case "weft-cni delegate bridge":
			note += "; bridge exec, host-local included"
		case "weft-cni host-local":
			note += "; the bridge's IPAM, in process"
		}
		out = append(out, CNIStep{Name: name, Median: quantile(one[name], 0.5), BatchMedian: quantile(batched[name], 0.5), Note: note})
	}
	hl, err := benchHostLocal(ctx, l, n, pods[0], 20)
	if err != nil {
		return nil, err
	}
	base, err := benchPluginExec(ctx, l, 20)
	if err != nil {
		return nil, err
	}
	return append(out,
		CNIStep{Name: "host-local binary ADD alone", Median: hl, Note: "20 runs of the bridge's IPAM config: what the bridge binary would exec"},
		CNIStep{Name: "exec of a no-op Go plugin", Median: base, Note: "20 runs of loopback VERSION: the floor of each exec here"},
	), nil
}

// steps is, by step name, the time each of pods spent in it; lat are the
// pods' whole ADDs and own weft-cni's timings.
func (e *execTimer) steps(own map[string]cni.Timing, pods []*Pod, lat []time.Duration) (map[string][]time.Duration, error) {
	steps := map[string][]time.Duration{}
	add := func(name string, d time.Duration) { steps[name] = append(steps[name], d) }
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, p := range pods {
		ex := e.execs[p.ContainerID]
		t, ok := own[p.ContainerID]
		if ex == nil || !ok {
			return nil, fmt.Errorf("cni bench: no timings of pod %s (execs %v)", p.ContainerID, ex)
		}
		add("exec flannel (weft-cni)", ex["flannel"])
		for _, s := range t.Steps {
			add("weft-cni "+s.Step, s.D)
		}
		add("weft-cni process start, exit", ex["flannel"]-t.Total())
		add("exec portmap", ex["portmap"])
		add("libcni itself", lat[i]-ex["flannel"]-ex["portmap"])
	}
	return steps, nil
}

// readCNITimings reads weft-cni's timings by container ID, and the names
// of their steps in the order first seen.
func readCNITimings(path string) (map[string]cni.Timing, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("cni bench: weft-cni's timings: %w", err)
	}
	out := map[string]cni.Timing{}
	var order []string
	for line := range strings.Lines(string(data)) {
		var t cni.Timing
		if err := json.Unmarshal([]byte(line), &t); err != nil {
			return nil, nil, fmt.Errorf("cni bench: %s: %w", path, err)
		}
		if t.Command != "ADD" {
			continue
		}
		out[t.ContainerID] = t
		for _, s := range t.Steps {
			if name := "weft-cni " + s.Step; !slices.Contains(order, name) {
				order = append(order, name)
			}
		}
	}
	return out, order, nil
}

// benchHostLocal times runs ADDs of host-local alone with the IPAM config
// weft-cni gave the bridge for pod p (from its saved delegate config),
// each for a container of its own, released again at once.
func benchHostLocal(ctx context.Context, l *Lab, n *Node, p *Pod, runs int) (time.Duration, error) {
	saved, err := os.ReadFile(filepath.Join(n.CNIDataDir, "flannel", p.ContainerID))
	if err != nil {
		return 0, fmt.Errorf("cni bench: saved delegate config: %w", err)
	}
	var d map[string]any
	if err := json.Unmarshal(saved, &d); err != nil {
		return 0, fmt.Errorf("cni bench: saved delegate config: %w", err)
	}
	conf, err := json.Marshal(map[string]any{"cniVersion": d["cniVersion"], "name": d["name"], "ipam": d["ipam"]})
	if err != nil {
		return 0, err
	}
	ipamType, _ := d["ipam"].(map[string]any)["type"].(string)
	path, err := invoke.FindInPath(ipamType, []string{l.CNIBinDir})
	if err != nil {
		return 0, err
	}
	var lat []time.Duration
	for i := range runs {
		args := &invoke.Args{ContainerID: fmt.Sprintf("%s-ipam-%d", l.Name, i), NetNS: nsPath(p.NS), IfName: "eth0", Path: l.CNIBinDir}
		start := time.Now()
		args.Command = "ADD"
		if _, err := invoke.ExecPluginWithResult(ctx, path, conf, args, nil); err != nil {
			return 0, fmt.Errorf("cni bench: %s ADD alone: %w", ipamType, err)
		}
		lat = append(lat, time.Since(start))
		args.Command = "DEL"
		if err := invoke.ExecPluginWithoutResult(ctx, path, conf, args, nil); err != nil {
			return 0, fmt.Errorf("cni bench: %s DEL alone: %w", ipamType, err)
		}
	}
	return quantile(lat, 0.5), nil
}

// benchPluginExec times runs execs of the loopback plugin asked only its
// VERSION.
func benchPluginExec(ctx context.Context, l *Lab, runs int) (time.Duration, error) {
	path := filepath.Join(l.CNIBinDir, "loopback")
	var lat []time.Duration
	for range runs {
		start := time.Now()
		if _, err := invoke.GetVersionInfo(ctx, path, nil); err != nil {
			return 0, fmt.Errorf("cni bench: loopback VERSION: %w", err)
		}
		lat = append(lat, time.Since(start))
	}
	return quantile(lat, 0.5), nil
}

// benchExecFloor runs rounds batches of batch chains at once, each chain
// exec'ing every plugin of list in turn with VERSION, as an ADD execs
// them but with no work in them; it returns the median and p99 of the
// chains, each timed from the start of its batch.
func benchExecFloor(ctx context.Context, l *Lab, list *libcni.NetworkConfigList, batch, rounds int) (median, p99 time.Duration, err error) {
	var paths []string
	for _, p := range list.Plugins {
		paths = append(paths, filepath.Join(l.CNIBinDir, p.Network.Type))
	}
	chain := func(_ int, start time.Time) (time.Duration, error) {
		for _, path := range paths {
			if _, err := invoke.GetVersionInfo(ctx, path, nil); err != nil {
				return 0, fmt.Errorf("cni bench: %s VERSION: %w", filepath.Base(path), err)
			}
		}
		return time.Since(start), nil
	}
	var lat []time.Duration
	for range rounds {
		ds, err := atOnce(batch, chain)
		if err != nil {
			return 0, 0, err
		}
		lat = append(lat, ds...)
	}
	median, p99, _ = latencies(lat)
	return median, p99, nil
}

// atOnce runs fn(i, start) for every i below n at once, all from one
// start, and returns the times they report.
func atOnce(n int, fn func(i int, start time.Time) (time.Duration, error)) ([]time.Duration, error) {
	ds := make([]time.Duration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Go(func() { ds[i], errs[i] = fn(i, start) })
	}
	wg.Wait()
	return ds, errors.Join(errs...)
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
