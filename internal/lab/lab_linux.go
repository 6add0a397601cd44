package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weft-net/weft/internal/cni"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/kubecp"
	"github.com/weft-net/weft/internal/netlinkx"
)

const netnsDir = "/run/netns"

func nsPath(name string) string { return filepath.Join(netnsDir, name) }

// Up builds a lab and waits until every agent is ready and every pod has an
// address. On failure it removes whatever it created.
func Up(ctx context.Context, o Options) (l *Lab, err error) {
	o, err = o.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := checkBinaries(o); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(o.Dir, stateFile)); err == nil {
		return nil, fmt.Errorf("lab %s already exists in %s", o.Name, o.Dir)
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("lab %s: %w", o.Name, err)
	}
	l = &Lab{State: plan(o), log: o.Log.With("lab", o.Name)}
	// The state file comes first, so that a lab that dies half-way can
	// still be taken down by a later `weft lab down`.
	if err := l.save(); err != nil {
		return nil, err
	}
	if err := setCurrent(o.Root, o.Dir); err != nil {
		return nil, err
	}
	defer func() {
		if err == nil {
			return
		}
		// Tear down with a fresh budget: ctx may be what failed.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if derr := l.Down(dctx, DownOptions{KeepLogs: true}); derr != nil {
			err = errors.Join(err, fmt.Errorf("tearing down: %w", derr))
		}
		err = fmt.Errorf("lab %s: %w (logs kept in %s)", l.Name, err, l.Dir)
		l = nil
	}()

	l.log.Info("building topology", "nodes", len(l.Nodes), "backend", l.Backend)
	if err := l.buildTopology(ctx); err != nil {
		return l, err
	}
	if err := l.startEtcd(ctx); err != nil {
		return l, err
	}
	if l.Store == StoreKube {
		if err := l.startKube(ctx); err != nil {
			return l, err
		}
	}
	for i := range l.Nodes {
		if l.Nodes[i].Unregistered {
			continue // a late node: its agent starts when it joins
		}
		if err := l.StartAgent(ctx, i+1); err != nil {
			return l, err
		}
	}
	rctx, cancel := context.WithTimeout(ctx, o.ReadyTimeout)
	defer cancel()
	if err := l.WaitReady(rctx); err != nil {
		return l, err
	}
	for i := range l.Nodes {
		n := &l.Nodes[i]
		for j := range n.Pods {
			if err := l.addPod(ctx, n, &n.Pods[j]); err != nil {
				return l, err
			}
		}
	}
	l.Ready = true
	return l, l.save()
}

func checkBinaries(o Options) error {
	if o.Store == StoreKube {
		if err := kubecp.CheckBinaries(o.KubeBinDir); err != nil {
			return fmt.Errorf("lab --store kube: %w", err)
		}
	}
	return needBinaries(o.CNIBinDir, filepath.Join(o.BinDir, "weft"), filepath.Join(o.BinDir, "weftd"))
}

// cniPlugins are the plugins a lab node's pods are wired with: weft's as
// "flannel" and the reference plugins of flannel's conflist.
var cniPlugins = append([]string{"flannel"}, cni.ReferencePluginNames()...)

// needBinaries checks for paths, the CNI plugins in cniBinDir and iproute2.
func needBinaries(cniBinDir string, paths ...string) error {
	for _, p := range cniPlugins {
		paths = append(paths, filepath.Join(cniBinDir, p))
	}
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("lab needs %s (run `make build`, or set --bin-dir/--cni-bin-dir): %w", p, err)
		}
	}
	for _, tool := range []string{"ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("lab needs %q (iproute2; `make deps` installs it): %w", tool, err)
		}
	}
	return nil
}

// buildTopology makes the namespaces and the underlay, all without touching
// the root namespace: each veth is created inside the underlay namespace with
// its peer placed straight into the node's namespace.
func (l *Lab) buildTopology(ctx context.Context) error {
	ul := l.UnderlayNS
	nss := []string{ul, l.ControlNS}
	for _, n := range l.Nodes {
		nss = append(nss, n.NS)
	}
	for _, name := range nss {
		if err := addNS(ctx, name); err != nil {
			return err
		}
		if err := l.noDAD(name); err != nil {
			return err
		}
	}
	if err := addBridge(ul, "br0"); err != nil {
		return err
	}
	attach := func(port, peerNS, addr string, addr6 netip.Addr) error {
		addrs := []netip.Prefix{netip.PrefixFrom(netip.MustParseAddr(addr), 24)}
		if addr6.IsValid() {
			addrs = append(addrs, netip.PrefixFrom(addr6, netip.MustParsePrefix(underlayPrefix6).Bits()))
		}
		return plugIn(ul, port, peerNS, addrs...)
	}
	var ctl6 netip.Addr
	if l.HasIPv6() {
		ctl6 = netip.MustParseAddr(ctlAddr6)
	}
	if err := attach("ctl", l.ControlNS, ctlAddr, ctl6); err != nil {
		return err
	}
	for _, n := range l.Nodes {
		if err := os.MkdirAll(n.Dir, 0o755); err != nil {
			return err
		}
		if err := attach(fmt.Sprintf("n%d", n.Index), n.NS, n.PublicIP.String(), n.PublicIPv6); err != nil {
			return err
		}
		if err := setSysctl(n.NS, "net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
		if l.HasIPv6() {
			if err := setSysctl(n.NS, "net/ipv6/conf/all/forwarding", "1"); err != nil {
				return err
			}
		}
	}
	return l.setUnderlayGSO()
}

// setUnderlayGSO gives every underlay link (the switch, its ports, each
// node's eth0) the GSO and GRO limits of the lab's NICs. A kernel without
// IPv4 BIG TCP (before 6.3) keeps 64 KiB, and the state says so.
func (l *Lab) setUnderlayGSO() error {
	if l.UnderlayGSO == KernelGSO {
		return nil
	}
	links := map[string][]string{l.UnderlayNS: {"br0", "ctl"}, l.ControlNS: {"eth0"}}
	for _, n := range l.Nodes {
		links[l.UnderlayNS] = append(links[l.UnderlayNS], fmt.Sprintf("n%d", n.Index))
		links[n.NS] = []string{"eth0"}
	}
	for name, devs := range links {
		supported, err := setGSO(name, devs, l.UnderlayGSO)
		if err != nil {
			return fmt.Errorf("underlay GSO size in %s: %w", name, err)
		}
		if !supported {
			l.log.Warn("kernel has no IPv4 BIG TCP (Linux 6.3 or later): the underlay keeps 64 KiB GSO packets")
			l.UnderlayGSO = 0
			return nil
		}
	}
	return nil
}

// setGSO sets the IPv4 GSO and GRO limits of links devs in namespace name,
// unless the kernel reports no such limit (supported false).
func setGSO(name string, devs []string, size int) (supported bool, err error) {
	h, err := netlinkx.NewAt(nsPath(name))
	if err != nil {
		return false, err
	}
	defer h.Close()
	for _, dev := range devs {
		link, err := h.LinkByName(dev)
		if err != nil {
			return false, err
		}
		if link.Attrs().GSOIPv4MaxSize == 0 {
			return false, nil
		}
		if err := h.LinkSetIPv4GSOMaxSize(link, size); err != nil {
			return false, err
		}
	}
	return true, nil
}

// noDAD turns duplicate address detection off in namespace name, for the
// links made there from now on, in a lab with IPv6: every address is
// planned, none can clash, and waiting a second or two for each would
// only slow Up (and the CNI bridge plugin, which waits for DAD to end).
func (l *Lab) noDAD(name string) error {
	if !l.HasIPv6() {
		return nil
	}
	for _, k := range []string{"net/ipv6/conf/default/accept_dad", "net/ipv6/conf/all/accept_dad"} {
		if err := setSysctl(name, k, "0"); err != nil {
			return err
		}
	}
	return nil
}

// setSysctl writes /proc/sys/<key> as seen from inside namespace name.
func setSysctl(name, key, value string) error {
	err := ns.WithNetNSPath(nsPath(name), func(ns.NetNS) error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
	if err != nil {
		return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, name, err)
	}
	return nil
}

// weftdArgs is node n's agent command line.
func (l *Lab) weftdArgs(n *Node, extra []string) []string {
	args := []string{
		"--iface=eth0",
		"--subnet-file=" + n.SubnetFile,
		"--healthz-ip=127.0.0.1",
		"--healthz-port=" + strconv.Itoa(healthzPort),
	}
	if l.Store == StoreKube {
		args = append(args, "--kube-subnet-mgr", "--kubeconfig-file="+n.Kubeconfig, "--net-config-path="+l.NetConfFile)
	} else {
		args = append(args, l.EtcdClientArgs(false)...)
	}
	if l.IPMasq {
		args = append(args, "--ip-masq")
	}
	return append(args, extra...)
}

// StartAgent starts weftd on node i (1-based), detached, logging to the
// node's weftd.log. It does not wait for readiness (see WaitReady).
func (l *Lab) StartAgent(ctx context.Context, i int, extraArgs ...string) error {
	n := l.node(i)
	args := l.weftdArgs(n, append(append([]string(nil), l.WeftdArgs...), extraArgs...))
	env := l.EtcdClientEnv()
	if l.Store == StoreKube {
		// As the DaemonSet gives it, from spec.nodeName.
		env = []string{"NODE_NAME=" + n.Name}
	}
	bin := filepath.Join(l.BinDir, "weftd")
	if l.Backend == config.BackendWireGuard {
		env = append(env, "WIREGUARD_KEY_FILE="+n.WGKeyFile())
		// The nodes share one file system, and wireguard-go's UAPI socket
		// path (/run/wireguard/flannel-wg.sock) is fixed: each agent gets
		// a /run/wireguard of its own, a tmpfs in the mount namespace `ip
		// netns exec` made for it (slave to the host's, so nothing leaks).
		args = append([]string{"-c", `mkdir -p /run/wireguard && mount -t tmpfs -o mode=0700 weft-wg /run/wireguard && exec "$0" "$@"`, bin}, args...)
		bin = "/bin/sh"
	}
	pid, err := startDetached(n.NS, bin, args, env, n.Log)
	if err != nil {
		return fmt.Errorf("node %d: starting weftd: %w", i, err)
	}
	l.log.Info("started weftd", "node", i, "ns", n.NS, "pid", pid)
	return writePID(n.PIDFile, pid)
}

// StopAgent stops weftd on node i: SIGTERM, then SIGKILL after 10 s. Its
// kernel state (devices, routes) stays, as after a crash.
func (l *Lab) StopAgent(ctx context.Context, i int) error {
	n := l.node(i)
	pid, err := readPID(n.PIDFile)
	if err != nil {
		return fmt.Errorf("node %d: %w", i, err)
	}
	if !inNamespace(pid, n.NS) {
		return nil // already gone (the pid may even have been reused)
	}
	if err := terminate(ctx, []int{pid}, 10*time.Second); err != nil {
		return fmt.Errorf("node %d: stopping weftd: %w", i, err)
	}
	_ = os.Remove(n.PIDFile)
	return nil
}

// KillAgent kills weftd on node i with SIGKILL, as a crash would.
func (l *Lab) KillAgent(ctx context.Context, i int) error {
	n := l.node(i)
	pid, err := readPID(n.PIDFile)
	if err != nil {
		return fmt.Errorf("node %d: %w", i, err)
	}
	if !inNamespace(pid, n.NS) {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	return waitGone(ctx, []int{pid}, 10*time.Second)
}

// RestartAgent stops weftd on node i, starts it again with the same flags
// plus extraArgs, and waits until the node is ready.
func (l *Lab) RestartAgent(ctx context.Context, i int, extraArgs ...string) error {
	if err := l.StopAgent(ctx, i); err != nil {
		return err
	}
	if err := l.StartAgent(ctx, i, extraArgs...); err != nil {
		return err
	}
	return l.waitNode(ctx, l.node(i))
}

// AgentPID returns the pid of node i's weftd, or an error if it is not
// running.
func (l *Lab) AgentPID(i int) (int, error) {
	n := l.node(i)
	pid, err := readPID(n.PIDFile)
	if err != nil {
		return 0, err
	}
	if !inNamespace(pid, n.NS) {
		return 0, fmt.Errorf("node %d: weftd (pid %d) is not running", i, pid)
	}
	return pid, nil
}

// Exec runs a command inside namespace nsName and returns its combined
// output; a failure's error includes the output.
func (l *Lab) Exec(ctx context.Context, nsName string, argv ...string) ([]byte, error) {
	return nsExec(ctx, nsName, argv...)
}

func nsExec(ctx context.Context, nsName string, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", nsName}, argv...)...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("in %s: %s: %w: %s", nsName, strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// DownOptions say how to take a lab down.
type DownOptions struct {
	// KeepLogs keeps the lab directory's *.log files; everything else goes.
	KeepLogs bool
}

// labNSPattern matches every namespace a lab called name may have created,
// including ones its state file never recorded (a crash during Up).
func labNSPattern(name string) *regexp.Regexp {
	return regexp.MustCompile(`^` + regexp.QuoteMeta(name) + `-(ul|ctl|n[0-9]+(-p[0-9]+)?)$`)
}

// Down kills every process in the lab's namespaces, deletes the namespaces
// and removes the lab directory. It works on a partly built lab and is safe
// to call twice.
func (l *Lab) Down(ctx context.Context, o DownOptions) error {
	names := map[string]bool{}
	for _, n := range l.Namespaces() {
		names[n] = true
	}
	if entries, err := os.ReadDir(netnsDir); err == nil {
		re := labNSPattern(l.Name)
		for _, e := range entries {
			if re.MatchString(e.Name()) {
				names[e.Name()] = true
			}
		}
	}
	var existing []string
	for _, n := range append(l.Namespaces(), sortedKeys(names)...) {
		if _, err := os.Stat(nsPath(n)); err == nil && !slices.Contains(existing, n) {
			existing = append(existing, n)
		}
	}
	var errs []error
	// Every process first, so that no agent sees its namespace vanish.
	var pids []int
	for _, n := range existing {
		p, err := nsPIDs(ctx, n)
		if err != nil {
			errs = append(errs, err)
		}
		pids = append(pids, p...)
	}
	if err := terminate(ctx, pids, 10*time.Second); err != nil {
		errs = append(errs, err)
	}
	for _, n := range existing {
		if err := ip(ctx, "netns", "del", n); err != nil {
			errs = append(errs, err)
		}
	}
	root := filepath.Dir(l.Dir)
	clearCurrent(root, l.Dir)
	if o.KeepLogs {
		errs = append(errs, removeAllBut(l.Dir, func(p string) bool {
			return strings.HasSuffix(p, ".log")
		}))
	} else if err := os.RemoveAll(l.Dir); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		l.log.Info("lab down", "namespaces", len(existing))
	}
	return errors.Join(errs...)
}

// Leftovers returns the namespaces of the lab that still exist; after Down it
// is empty.
func (l *Lab) Leftovers() []string {
	var out []string
	entries, _ := os.ReadDir(netnsDir)
	re := labNSPattern(l.Name)
	for _, e := range entries {
		if re.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}

// removeAllBut deletes everything under dir except files keep accepts (and
// the directories holding them).
func removeAllBut(dir string, keep func(path string) bool) error {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if !d.IsDir() && !keep(p) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, f := range files {
		_ = os.Remove(f)
	}
	// Empty directories go, deepest first.
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && p != dir {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = os.Remove(dirs[i]) // fails, as wanted, when not empty
	}
	return nil
}

// nsPIDs lists the processes in a namespace (`ip netns pids`).
func nsPIDs(ctx context.Context, name string) ([]int, error) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", name).Output()
	if err != nil {
		return nil, fmt.Errorf("listing processes in %s: %w", name, err)
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids, nil
}

// terminate sends SIGTERM to pids, waits up to grace for them to go, then
// sends SIGKILL to the rest.
func terminate(ctx context.Context, pids []int, grace time.Duration) error {
	if len(pids) == 0 {
		return nil
	}
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGTERM)
	}
	if waitGone(ctx, pids, grace) == nil {
		return nil
	}
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	return waitGone(ctx, pids, 5*time.Second)
}

func waitGone(ctx context.Context, pids []int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		var left []int
		for _, p := range pids {
			if alive(p) {
				left = append(left, p)
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still running after %s", left, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z' && s[i+2] != 'X'
	}
	return true
}

// inNamespace reports whether pid is alive and in network namespace name.
func inNamespace(pid int, name string) bool {
	if !alive(pid) {
		return false
	}
	var a, b syscall.Stat_t
	if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &a) != nil || syscall.Stat(nsPath(name), &b) != nil {
		return false
	}
	return a.Ino == b.Ino && a.Dev == b.Dev
}

// startDetached starts bin inside namespace name in its own session, with
// stdout and stderr appended to logPath, and returns its pid. The process
// outlives the caller; while the caller lives, it is reaped when it exits.
func startDetached(name, bin string, args, env []string, logPath string) (int, error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", name, bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// The agent reads FLANNELD_* variables; the caller's must not leak in.
	// So must the Kubernetes variables it reads; env sets the ones it gets.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FLANNELD_") && !slices.Contains(kubeAgentEnv, strings.SplitN(kv, "=", 2)[0]) {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("%s in %s: %w", bin, name, err)
	}
	go func() { _ = cmd.Wait() }()
	return cmd.Process.Pid, nil
}

// kubeAgentEnv are the variables weftd reads in Kubernetes mode.
var kubeAgentEnv = []string{"NODE_NAME", "POD_NAME", "POD_NAMESPACE", "EVENT_QUEUE_DEPTH", "CONT_WHEN_CACHE_NOT_READY", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}

func writePID(path string, pid int) error {
	return os.WriteFile(path, []byte(strconv.Itoa(pid)+"\n"), 0o644)
}

func readPID(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("reading pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("pid file %s: %w", path, err)
	}
	return pid, nil
}

// ip runs one iproute2 command.
func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Health says in a few words whether the lab still runs: its namespaces and
// how many agents are alive.
func (l *Lab) Health() string {
	missing := 0
	for _, n := range l.Namespaces() {
		if _, err := os.Stat(nsPath(n)); err != nil {
			missing++
		}
	}
	running := 0
	for _, n := range l.Nodes {
		if pid, err := readPID(n.PIDFile); err == nil && inNamespace(pid, n.NS) {
			running++
		}
	}
	etcd := 0
	for _, m := range l.EtcdMembers {
		if pid, err := readPID(m.PIDFile); err == nil && inNamespace(pid, l.ControlNS) {
			etcd++
		}
	}
	state := "up"
	switch {
	case !l.Ready:
		state = "incomplete"
	case missing > 0:
		state = "broken"
	}
	// A kube lab's agents read the API server, not etcd (which backs it):
	// its control plane is what they depend on.
	store := fmt.Sprintf("%d/%d etcd members", etcd, len(l.EtcdMembers))
	if l.Store == StoreKube {
		cp := 0
		for _, name := range []string{kubecp.APIServerBinary, kubecp.ControllerManagerBinary} {
			if pid, err := readPID(filepath.Join(l.KubeDir, name+".pid")); err == nil && inNamespace(pid, l.ControlNS) {
				cp++
			}
		}
		store = fmt.Sprintf("%d/2 control-plane processes (kube-apiserver, kube-controller-manager), %s behind them", cp, store)
	}
	return fmt.Sprintf("%s: %d/%d agents running, %s, %d namespaces missing", state, running, len(l.Nodes), store, missing)
}
