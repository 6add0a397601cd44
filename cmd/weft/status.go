package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/weft-net/weft/internal/agentflags"
	"github.com/weft-net/weft/internal/doctor"
	"github.com/weft-net/weft/internal/status"
)

// runStatus is `weft status`: the cluster as this node sees it.
func runStatus(ctx context.Context, args []string) error {
	fs := newFlags("weft status", "[-o text|json] [--probe] [weftd's flags]", `Shows the cluster as this node (the network namespace it runs in) sees it:
a header with the store, the network config and this node's agent, then one
row per lease: node (or lease key), subnets and public IPs (IPv4, and IPv6
with dual stack), backend and its data (VtepMAC), time since renewal and
time left (or "reservation"), and whether this node has programmed it over
each family the lease has (routes, neighbours, FDB entries; what an IPv6
half lacks says so: "missing IPv6 route"). --probe adds the round trip of
weft doctor's peer probe, over IPv4 and over IPv6 ("v6 ..."). Works with
the etcd and the Kubernetes store, read-only, with the settings of the
weftd running here (as weft doctor finds them).

Exits 1 when something is wrong: an expired lease, a lease this node has
not programmed (over either family), a subnet routed without a lease, this
node's subnet without a lease, a failed probe, the store, config or agent
failing.`)
	af := agentflags.Register(fs.FlagSet)
	out := fs.String("o", "text", "output: text or json")
	probe := fs.Bool("probe", false, "probe every peer over each family (as weft doctor does) and show the round trip")
	timeout := fs.Duration("timeout", doctor.DefaultTimeout, "bound on each network call (etcd or the API server, health server)")
	po := probeFlags(fs)
	if err := fs.parseNoArgs(args); err != nil {
		return err
	}
	if *out != "text" && *out != "json" {
		return fs.usageErr(fmt.Errorf("-o %q: want text or json", *out))
	}
	if *timeout <= 0 {
		return fmt.Errorf("--timeout %s: want a positive duration", *timeout)
	}
	s, from, err := doctor.Settings(af, os.Environ())
	for _, w := range s.Warnings {
		fmt.Fprintf(os.Stderr, "weft status: warning: %s\n", w)
	}
	if err != nil {
		return fmt.Errorf("settings from %s: %w", from, err)
	}
	facts := doctor.Gather(ctx, s.Options, *timeout)
	facts.SettingsFrom = from
	if o, ok := po.options(); ok && *probe {
		facts.Probe = doctor.Probe(ctx, facts, o)
	}
	st := status.Build(doctor.ClusterView(facts))
	if *out == "json" {
		err = st.WriteJSON(os.Stdout)
	} else {
		err = st.WriteText(os.Stdout)
	}
	if err != nil {
		return err
	}
	if !st.OK {
		return errors.New(plural(len(st.Problems), "problem", "problems"))
	}
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
