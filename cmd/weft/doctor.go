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

doctor takes weftd's flags and FLANNELD_* variables, meaning what they mean
to weftd, so the agent's own command line can be passed as is.`)
	af := agentflags.Register(fs.FlagSet)
	jsonOut := fs.Bool("json", false, "print the results as JSON")
	timeout := fs.Duration("timeout", doctor.DefaultTimeout, "bound on each network call (etcd, health server)")
	if err := fs.parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fs.usageErr(fmt.Errorf("unexpected argument %q (doctor takes only flags)", fs.Arg(0)))
	}
	if err := af.ApplyEnv(fs.FlagSet, os.LookupEnv); err != nil {
		return err
	}
	s, err := af.Settings()
	if err != nil {
		return err
	}
	if *timeout <= 0 {
		return fmt.Errorf("--timeout %s: want a positive duration", *timeout)
	}
	rep := doctor.Evaluate(doctor.Gather(ctx, s.Options, *timeout))
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
