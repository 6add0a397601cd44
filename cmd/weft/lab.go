package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

// labGroup is `weft lab`.
func labGroup() *group {
	return &group{
		path: "weft lab",
		about: `Builds a weft cluster out of network namespaces on this machine: an
underlay bridge, an etcd server, one weftd per node and pods attached by
the CNI plugins, with nothing created in the root namespace.`,
		footer: "Run 'weft lab <command> --help' for its flags. Every command but status needs root.",
		cmds: []subcommand{
			{name: "up", summary: "build a lab: underlay, etcd, one weftd per node, pods via CNI", run: labUp},
			{name: "check", summary: "ping every pod from every pod; non-zero exit if any fails", run: labCheck},
			{name: "bench", summary: "iperf3 throughput, bare underlay vs pod to pod (--all: every\nbenchmark, each in fresh labs)", run: labBench},
			{name: "down", summary: "kill the lab's processes, delete its namespaces and directory", run: labDown},
			{name: "status", summary: "list labs", run: labStatus},
			{name: "demo", summary: "up, check, a short bench and down, for each backend", run: labDemo},
			{name: "doctor", summary: "run weft doctor in a node's namespace with its agent's flags", run: labDoctor},
			{name: "chaos", summary: "random faults while every pod pings every other; per fault, loss\nand time to heal; non-zero exit on an unhealed fault", run: labChaos},
		},
	}
}

// needRoot is checked after the flags are parsed, so that --help works
// for anyone.
func needRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("the lab creates network namespaces and needs root")
	}
	return nil
}

// parseAsRoot parses args, flags only, then needs root.
func parseAsRoot(fs *flags, args []string) error {
	if err := fs.parseNoArgs(args); err != nil {
		return err
	}
	return needRoot()
}

// openAsRoot is parseAsRoot, then opens the lab the flags of openFlags
// name.
func openAsRoot(fs *flags, args []string, root, ref *string) (*lab.Lab, error) {
	if err := parseAsRoot(fs, args); err != nil {
		return nil, err
	}
	return lab.Open(*root, *ref, nil)
}

// labFlags are the flags that say how to build a lab.
type labFlags struct {
	name, root, backend, store, binDir, cniBinDir, logLevel string
	ipFamily                                                string
	nodes, pods, underlayGSO, etcdMembers                   int
	ipMasq, etcdTLS                                         bool
	timeout                                                 time.Duration
	weftdArgs                                               stringList
}

func (f *labFlags) register(fs *flag.FlagSet, withName bool) {
	if withName {
		fs.StringVar(&f.name, "name", "", "lab name (default weft-<6 hex>)")
		fs.StringVar(&f.backend, "backend", lab.DefaultBackend, "backend: vxlan, host-gw, udp or wireguard")
	}
	fs.StringVar(&f.root, "root", lab.DefaultRoot, "directory holding the labs")
	fs.StringVar(&f.store, "store", lab.StoreEtcd, "where leases live: etcd, or kube (a real kube-apiserver and controller-manager; agents run with --kube-subnet-mgr)")
	fs.StringVar(&f.ipFamily, "ip-family", lab.IPFamilyIPv4, "pod addresses: ipv4, dual (IPv4 and IPv6) or ipv6; with IPv6 the underlay has 2001:db8::/64 beside 192.0.2.0/24 (vxlan, host-gw and wireguard)")
	fs.IntVar(&f.etcdMembers, "etcd-members", 1, "etcd members, one cluster in the control namespace; agents get every endpoint")
	fs.BoolVar(&f.etcdTLS, "etcd-tls", false, "secure etcd as in production: TLS for clients and peers, client certificates required, user/password auth (files in <lab>/pki)")
	fs.IntVar(&f.nodes, "nodes", lab.DefaultNodes, "number of nodes")
	fs.IntVar(&f.pods, "pods", lab.DefaultPodsPerNode, "pods per node")
	fs.StringVar(&f.binDir, "bin-dir", "", "directory with weft and weftd (default: this binary's)")
	fs.StringVar(&f.cniBinDir, "cni-bin-dir", "", "directory with the CNI plugins (default: <bin-dir>/cni)")
	fs.BoolVar(&f.ipMasq, "ip-masq", true, "run weftd with --ip-masq, as flannel is deployed")
	fs.IntVar(&f.underlayGSO, "underlay-gso", lab.DefaultUnderlayGSO,
		fmt.Sprintf("gso/gro_ipv4_max_size of the underlay's links: above %d is BIG TCP, %d turns it off", lab.KernelGSO, lab.KernelGSO))
	fs.DurationVar(&f.timeout, "timeout", 60*time.Second, "how long to wait for the store and the agents")
	fs.Var(&f.weftdArgs, "weftd-arg", "extra weftd flag (repeatable)")
	fs.StringVar(&f.logLevel, "log-level", "info", "progress log level: debug, info, warn, error")
}

func (f *labFlags) options() (lab.Options, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(f.logLevel)); err != nil {
		return lab.Options{}, fmt.Errorf("--log-level: %w", err)
	}
	ipMasq := f.ipMasq
	return lab.Options{
		Name:         f.name,
		Root:         f.root,
		Nodes:        f.nodes,
		PodsPerNode:  f.pods,
		Backend:      f.backend,
		Store:        f.store,
		IPFamily:     f.ipFamily,
		EtcdMembers:  f.etcdMembers,
		EtcdTLS:      f.etcdTLS,
		IPMasq:       &ipMasq,
		UnderlayGSO:  f.underlayGSO,
		BinDir:       f.binDir,
		CNIBinDir:    f.cniBinDir,
		WeftdArgs:    f.weftdArgs,
		ReadyTimeout: f.timeout,
		Log:          slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})),
	}, nil
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, " ") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func labUp(ctx context.Context, args []string) error {
	fs := newFlags("weft lab up", "[flags]", `Builds a lab and prints its namespaces, subnets, pod IPs and logs. The lab
becomes the current one, which the other commands act on unless given --lab.`)
	var f labFlags
	f.register(fs.FlagSet, true)
	if err := parseAsRoot(fs, args); err != nil {
		return err
	}
	o, err := f.options()
	if err != nil {
		return err
	}
	l, err := lab.Up(ctx, o)
	if err != nil {
		return err
	}
	l.Describe(os.Stdout)
	return nil
}

// openFlags select an existing lab.
func openFlags(fs *flags) (root, ref *string) {
	root = fs.String("root", lab.DefaultRoot, "directory holding the labs")
	ref = fs.String("lab", "", "lab name or directory (default: the most recent)")
	return root, ref
}

func labCheck(ctx context.Context, args []string) error {
	fs := newFlags("weft lab check", "[flags]", `Pings every pod from every pod (and with --from-nodes, from every node) and
prints the matrix, one per IP family of the lab (IPv4, IPv6 or both). Exits
1 if any ping fails.`)
	root, ref := openFlags(fs)
	nodes := fs.Bool("from-nodes", false, "also ping every pod from every node")
	parallel := fs.Int("parallel", 8, "pings in flight")
	l, err := openAsRoot(fs, args, root, ref)
	if err != nil {
		return err
	}
	return check(ctx, l, lab.CheckOptions{Parallel: *parallel, NodeToPod: *nodes}, os.Stdout)
}

func check(ctx context.Context, l *lab.Lab, o lab.CheckOptions, w io.Writer) error {
	failed, tested := 0, 0
	for _, v6 := range l.Families() {
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		fmt.Fprintf(w, "lab %s (%s): ping every pod from every pod over %s\n", l.Name, l.Backend, fam)
		o.IPv6 = v6
		m, err := l.Check(ctx, o)
		if err != nil {
			return err
		}
		m.Render(w)
		failed, tested = failed+m.Failures(), tested+m.Tested()
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d pings failed", failed, tested)
	}
	return nil
}

func labChaos(ctx context.Context, args []string) error {
	fs := newFlags("weft lab chaos", "[flags]", `Makes random faults in a running lab, one at a time, while every pod pings
every other over each IP family the lab has: weftd killed (SIGKILL) and
started again, etcd killed and started again, a route, neighbour, FDB entry
or the backend's device deleted (of IPv4 and IPv6 in turn in a dual-stack
lab: flannel-v6.1 and its entries, host-gw's IPv6 routes, flannel-wg-v6), a
node's underlay link flapped, a hostile lease written. After each it waits
until every agent is ready and every pod reaches every other over every
family, then prints, per kind of fault, the echoes lost (per family with
dual stack) and the time to heal. Exits 1 if a fault did not heal, if a
fault that cuts no path (agent kill, etcd loss, hostile lease) lost
packets, or if a fault lost packets of a family it did not cut.`)
	root, ref := openFlags(fs)
	dur := fs.Duration("duration", time.Minute, "how long to keep making faults")
	seed := fs.Uint64("seed", 0, "random seed, to replay a run (default: random, printed)")
	heal := fs.Duration("heal-within", 15*time.Second, "how long a fault may take to heal")
	l, err := openAsRoot(fs, args, root, ref)
	if err != nil {
		return err
	}
	fam := cmp.Or(l.IPFamily, lab.IPFamilyIPv4)
	fmt.Printf("lab %s (%s, %s): chaos for %s\n", l.Name, l.Backend, fam, *dur)
	r, err := l.Chaos(ctx, lab.ChaosOptions{Duration: *dur, Seed: *seed, HealWithin: *heal, Progress: os.Stdout})
	fmt.Printf("\nseed %d\n", r.Seed)
	r.Render(os.Stdout)
	if err != nil {
		return err
	}
	if n := r.Unhealed(); n > 0 {
		return fmt.Errorf("%d faults unhealed or lost packets they should not have", n)
	}
	return nil
}

func labBench(ctx context.Context, args []string) error {
	fs := newFlags("weft lab bench", "[flags]", `Measures the lab: iperf3 throughput of the bare underlay against pod to
pod. With --all, runs every benchmark (throughput per backend with and
without BIG TCP, IPv6 beside IPv4 in dual-stack vxlan and host-gw labs, the
agent's programming time and memory, the udp datapath, CNI ADD latency),
each in fresh labs it brings up and takes down, and prints one table.`)
	root, ref := openFlags(fs)
	var f labFlags
	f.register(flag.NewFlagSet("", flag.ContinueOnError), false) // defaults
	all := fs.Bool("all", false, "run every benchmark, each in fresh labs it brings up and takes down")
	only := fs.String("only", "", "comma-separated benchmarks to run (default: all)")
	quick := fs.Bool("quick", false, "short measurements (2 s)")
	dur := fs.Duration("time", 0, "length of each throughput measurement (default 5s, 2s with --quick)")
	fs.IntVar(&f.nodes, "nodes", lab.DefaultNodes, "nodes per lab (with --all)")
	fs.StringVar(&f.binDir, "bin-dir", "", "directory with weft and weftd (with --all)")
	fs.StringVar(&f.cniBinDir, "cni-bin-dir", "", "directory with the CNI plugins (with --all)")
	fs.StringVar(&f.logLevel, "log-level", "warn", "progress log level (with --all)")
	if err := parseAsRoot(fs, args); err != nil {
		return err
	}
	benches, err := lab.Select(lab.Benchmarks(), *only)
	if err != nil {
		return err
	}
	bo := lab.BenchOptions{Duration: *dur, Quick: *quick, Progress: os.Stderr}
	var results []lab.Result
	if *all {
		f.root = *root
		if bo.Lab, err = f.options(); err != nil {
			return err
		}
		results, err = lab.RunSuite(ctx, bo, benches)
	} else {
		l, oerr := lab.Open(*root, *ref, nil)
		if oerr != nil {
			return oerr
		}
		results, err = l.Bench(ctx, bo, benches)
	}
	fmt.Println()
	lab.RenderResults(os.Stdout, results)
	return err
}

func labDown(ctx context.Context, args []string) error {
	fs := newFlags("weft lab down", "[flags]", `Kills the lab's processes, deletes its namespaces and removes its
directory; it also takes down a lab that failed half-way.`)
	root, ref := openFlags(fs)
	keep := fs.Bool("keep-logs", false, "keep the logs in the lab directory")
	all := fs.Bool("all", false, "take down every lab under --root")
	if err := parseAsRoot(fs, args); err != nil {
		return err
	}
	var dirs []string
	if *all {
		labs, err := lab.List(*root)
		if err != nil {
			return err
		}
		for _, s := range labs {
			dirs = append(dirs, s.Dir)
		}
	} else {
		dirs = []string{*ref}
	}
	var errs []error
	for _, d := range dirs {
		l, err := lab.Open(*root, d, nil)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := l.Down(ctx, lab.DownOptions{KeepLogs: *keep}); err != nil {
			errs = append(errs, fmt.Errorf("lab %s: %w", l.Name, err))
			continue
		}
		fmt.Printf("lab %s down\n", l.Name)
	}
	return errors.Join(errs...)
}

func labStatus(ctx context.Context, args []string) error {
	fs := newFlags("weft lab status", "[flags]", `Lists the labs under --root with their health; * marks the current one.
As root, it also shows the current lab (or --lab) as a node sees it: weft
status run in node --node's namespace (--probe: with the peer probes).`)
	root := fs.String("root", lab.DefaultRoot, "directory holding the labs")
	ref := fs.String("lab", "", "lab to show the cluster of (default: the current one)")
	node := fs.Int("node", 1, "node whose view weft status shows")
	probe := fs.Bool("probe", false, "probe the peers from that node")
	if err := fs.parseNoArgs(args); err != nil {
		return err
	}
	labs, err := lab.List(*root)
	if err != nil {
		return err
	}
	if len(labs) == 0 {
		fmt.Printf("no labs in %s\n", *root)
		return nil
	}
	cur := lab.CurrentName(*root)
	for _, s := range labs {
		l, err := lab.Open(*root, s.Dir, nil)
		if err != nil {
			return err
		}
		mark := " "
		if s.Name == cur {
			mark = "*"
		}
		fmt.Printf("%s %s  %-7s %d nodes  created %s  %s\n", mark, s.Name, s.Backend, len(s.Nodes),
			s.Created.Local().Format(time.DateTime), l.Health())
		if s.Store == lab.StoreKube {
			printKubeStatus(ctx, l)
		}
	}
	if os.Geteuid() != 0 {
		return nil
	}
	l, err := lab.Open(*root, *ref, nil)
	if err != nil {
		return err
	}
	if *node < 1 || *node > len(l.Nodes) {
		return fs.usageErr(fmt.Errorf("--node %d: want 1..%d", *node, len(l.Nodes)))
	}
	fmt.Printf("\n== lab %s as node %d (%s) sees it\n", l.Name, *node, l.Node(*node).NS)
	var extra []string
	if *probe {
		extra = append(extra, "--probe")
	}
	return runInNode(ctx, l, *node, "status", extra)
}

// runInNode runs `weft <cmd> [extra] [the node's agent flags]` in lab
// node i's namespace, as the node's agent would see it.
func runInNode(ctx context.Context, l *lab.Lab, i int, cmd string, extra []string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	argv := append([]string{"netns", "exec", l.Node(i).NS, self, cmd}, extra...)
	c := exec.CommandContext(ctx, "ip", append(argv, labDoctorArgs(l, i)...)...)
	c.Stdout, c.Stderr = os.Stdout, os.Stderr
	if l.Store == lab.StoreKube {
		// As the DaemonSet gives weftd; doctor reads it when no weftd runs.
		c.Env = append(os.Environ(), "NODE_NAME="+l.Node(i).Name)
	}
	if err := c.Run(); err != nil {
		return fmt.Errorf("node %d: weft %s: %w", i, cmd, err)
	}
	return nil
}

// printKubeStatus prints a kube lab's API server and its Nodes, or why
// they cannot be read.
func printKubeStatus(ctx context.Context, l *lab.Lab) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ks, err := l.KubeStatus(ctx)
	if err != nil {
		fmt.Printf("    apiserver %s: %v\n", l.APIServer, err)
		return
	}
	ks.Write(os.Stdout, "    ")
}

func labDemo(ctx context.Context, args []string) error {
	fs := newFlags("weft lab demo", "[flags]", `For each backend: brings up a lab, pings every pod from every pod and
node, streams pod to pod with iperf3, and takes the lab down.`)
	var f labFlags
	f.register(fs.FlagSet, false)
	backends := fs.String("backends", "vxlan,host-gw", "comma-separated backends, one lab each")
	if err := parseAsRoot(fs, args); err != nil {
		return err
	}
	var errs []error
	for _, be := range strings.Split(*backends, ",") {
		f.backend = strings.TrimSpace(be)
		if err := demoOne(ctx, f); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.backend, err))
			fmt.Printf("\n%s lab FAILED: %v\n", f.backend, err)
		}
		if ctx.Err() != nil {
			break
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Println("\ndemo passed")
	return nil
}

func demoOne(ctx context.Context, f labFlags) (err error) {
	o, err := f.options()
	if err != nil {
		return err
	}
	fmt.Printf("\n=== %s: %d nodes, %d pods each ===\n", o.Backend, o.Nodes, o.PodsPerNode)
	l, err := lab.Up(ctx, o)
	if err != nil {
		return err
	}
	defer func() {
		// Always down, even when interrupted.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if derr := l.Down(dctx, lab.DownOptions{}); derr != nil {
			err = errors.Join(err, fmt.Errorf("down: %w", derr))
		} else {
			fmt.Printf("lab %s down; nothing left behind\n", l.Name)
		}
	}()
	l.Describe(os.Stdout)
	fmt.Println()
	if err := check(ctx, l, lab.CheckOptions{NodeToPod: true}, os.Stdout); err != nil {
		return err
	}
	fmt.Println("\nstreaming pod to pod across nodes (iperf3):")
	// The demo streams; the agent, udp and CNI figures are make bench's.
	stream, err := lab.Select(lab.Benchmarks(), "throughput")
	if err != nil {
		return err
	}
	results, err := l.Bench(ctx, lab.BenchOptions{Quick: true, Progress: os.Stdout}, stream)
	lab.RenderResults(os.Stdout, results)
	return err
}
