package main

import (
	"context"
	"fmt"
	"os"

	"github.com/weft-net/weft/internal/agentflags"
	"github.com/weft-net/weft/internal/doctor"
)

// runDoctor is `weft doctor`: it diagnoses the node (the network namespace
// it runs in) and exits non-zero when a check fails.
func runDoctor(ctx context.Context, args []string) error {
	fs := newFlags("weft doctor", "[--json] [--timeout D] [weftd's flags]", `Diagnoses this node, or the network namespace doctor runs in (ip netns exec
<ns> weft doctor): the store, the agent, the subnet file, the datapath,
forwarding and masquerading, one line per check (ok, warn, FAIL) with the
evidence and what to do next. Exits 1 when a check fails.

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
