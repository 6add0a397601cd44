package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/agentflags"
	"github.com/weft-net/weft/internal/doctor"
)

// runDoctor is `weft doctor`: it diagnoses the node (the network namespace
// it runs in) and exits non-zero when a check fails.
func runDoctor(ctx context.Context, args []string) error {
	fs := newFlags("weft doctor", "[--json] [--timeout D] [--peers LIST] [weftd's flags]", `Diagnoses this node, or the network namespace doctor runs in (ip netns exec
<ns> weft doctor): the store, the agent, the subnet file, the datapath,
forwarding and masquerading, kernel limits (the socket buffers weftd's udp
or wireguard-go datapath got, conntrack), one line per check (ok, warn, FAIL) with the evidence and what
to do next. Exits 1 when a check fails.

Then it probes every remote peer (up to --max-peers, in parallel, with ICMP
echoes only): its underlay address, its address through the backend (vxlan:
the remote flannel.<VNI>; host-gw: the remote gateway on cni0; udp: the
remote flannel0; wireguard: the remote flannel-wg), and a don't-fragment echo of the full pod MTU; one line
per peer with loss and round-trip time, a failure named by the hop that
fails (underlay unreachable, tunnel dropped, MTU black hole, peer's agent
not answering). --peers none skips the probes.

With --kube-subnet-mgr the store is the Kubernetes API, read (never written)
with the agent's credentials (--kubeconfig-file, --kube-api-url, else the
service account of weftd's pod): the API server, the agent's RBAC, the
net-conf (--net-config-path), this node's Node (NODE_NAME of weftd's
environment, else doctor's), its podCIDR, annotations and NetworkUnavailable
condition, and the leases every node publishes.

With no weftd flags, doctor checks with the settings of the weftd running in
this network namespace: its command line and FLANNELD_* variables, read from
/proc. weftd flags given to doctor, meaning what they mean to weftd, replace
that weftd's; with no weftd here, doctor's flags and FLANNELD_* variables
stand for the agent's.`)
	af := agentflags.Register(fs.FlagSet)
	jsonOut := fs.Bool("json", false, "print the results as JSON")
	timeout := fs.Duration("timeout", doctor.DefaultTimeout, "bound on each network call (etcd or the API server, health server)")
	po := probeFlags(fs)
	if err := fs.parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fs.usageErr(fmt.Errorf("unexpected argument %q (doctor takes only flags)", fs.Arg(0)))
	}
	if *timeout <= 0 {
		return fmt.Errorf("--timeout %s: want a positive duration", *timeout)
	}
	s, from, err := doctor.Settings(af, os.Environ())
	for _, w := range s.Warnings {
		fmt.Fprintf(os.Stderr, "weft doctor: warning: %s\n", w)
	}
	if err != nil {
		return fmt.Errorf("settings from %s: %w", from, err)
	}
	facts := doctor.Gather(ctx, s.Options, *timeout)
	facts.SettingsFrom = from
	if o, ok := po.options(); ok {
		facts.Probe = doctor.Probe(ctx, facts, o)
	}
	rep := doctor.Evaluate(facts)
	if *jsonOut {
		err = rep.WriteJSON(os.Stdout)
	} else {
		err = rep.WriteText(os.Stdout)
	}
	if err != nil {
		return err
	}
	if rep.Failed() {
		return fmt.Errorf("%d of %d checks failed", rep.Counts()[doctor.Fail], len(rep.Results))
	}
	return nil
}

// probeOpts are the flags choosing the peers to probe.
type probeOpts struct {
	peers   *string
	max     *int
	timeout *time.Duration
}

func probeFlags(fs *flags) probeOpts {
	return probeOpts{
		peers:   fs.String("peers", "all", "peers to probe: all, none, or a comma-separated list of public IPs, subnets, lease keys or node names"),
		max:     fs.Int("max-peers", doctor.DefaultMaxPeers, "probe at most this many peers"),
		timeout: fs.Duration("probe-timeout", doctor.DefaultProbeTimeout, "how long each hop's echoes are waited for"),
	}
}

// options are the probe options, and false for --peers none.
func (p probeOpts) options() (doctor.ProbeOptions, bool) {
	o := doctor.ProbeOptions{Max: *p.max, Timeout: *p.timeout}
	switch v := strings.TrimSpace(*p.peers); v {
	case "none":
		return o, false
	case "all", "":
	default:
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				o.Peers = append(o.Peers, s)
			}
		}
	}
	return o, true
}
