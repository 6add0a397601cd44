package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"

	"github.com/weft-net/weft/internal/lab"
)

// labDoctor is `weft lab doctor [node]`: weft doctor inside each node's
// namespace (or the one given), with the flags that node's weftd runs with.
func labDoctor(ctx context.Context, args []string) error {
	fs := newFlags("weft lab doctor", "[flags] [node]",
		"Runs weft doctor in a lab node's namespace (every node's without [node]),\nwith its peer probes: each node says which of the others it reaches.")
	root, ref := openFlags(fs)
	jsonOut := fs.Bool("json", false, "print each node's results as JSON")
	peers := fs.String("peers", "", "peers doctor probes (doctor's --peers; default all)")
	if err := fs.parse(args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return fs.usageErr(fmt.Errorf("unexpected arguments: %v", fs.Args()[1:]))
	}
	if err := needRoot(); err != nil {
		return err
	}
	l, err := lab.Open(*root, *ref, nil)
	if err != nil {
		return err
	}
	nodes := make([]int, 0, len(l.Nodes))
	switch fs.NArg() {
	case 0:
		for _, n := range l.Nodes {
			nodes = append(nodes, n.Index)
		}
	case 1:
		i, err := strconv.Atoi(fs.Arg(0))
		if err != nil || i < 1 || i > len(l.Nodes) {
			return fs.usageErr(fmt.Errorf("node %q: want 1..%d", fs.Arg(0), len(l.Nodes)))
		}
		nodes = append(nodes, i)
	}
	failed := 0
	for _, i := range nodes {
		var extra []string
		if *jsonOut {
			extra = append(extra, "--json")
		} else {
			fmt.Printf("== node %d (%s)\n", i, l.Node(i).NS)
		}
		if *peers != "" {
			extra = append(extra, "--peers="+*peers)
		}
		if err := runInNode(ctx, l, i, "doctor", extra); err != nil {
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				return err
			}
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("checks failed on %d of %d nodes", failed, len(nodes))
	}
	return nil
}

// labDoctorArgs are the flags doctor needs in node i: none while its weftd
// runs (doctor reads that weftd's own); with the agent stopped, those the
// lab starts every weftd with (underlay eth0), less the health port, which
// the lab does not publish.
func labDoctorArgs(l *lab.Lab, i int) []string {
	if _, err := l.AgentPID(i); err == nil {
		return nil
	}
	n := l.Node(i)
	args := append(l.EtcdClientArgs(true), "--iface=eth0", "--subnet-file="+n.SubnetFile)
	if l.Store == lab.StoreKube {
		args = []string{"--kube-subnet-mgr", "--kubeconfig-file=" + n.Kubeconfig, "--net-config-path=" + l.NetConfFile, "--iface=eth0", "--subnet-file=" + n.SubnetFile}
	}
	if l.IPMasq {
		args = append(args, "--ip-masq")
	}
	return append(args, l.WeftdArgs...)
}
