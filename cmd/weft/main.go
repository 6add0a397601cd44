// Command weft is the operator's tool: an embedded etcd server for one
// machine, the multi-node lab, and diagnostics.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

type command struct {
	summary string
	run     func(ctx context.Context, args []string) error
}

func commands() map[string]command {
	return map[string]command{
		"etcd":        {"run a single-member embedded etcd server", runEtcd},
		"doctor":      {"diagnose this node: store, agent, config, subnet file, datapath", runDoctor},
		"install-cni": {"install the CNI plugin and conflist", runInstallCNI},
		"lab":         {"run a multi-node lab in network namespaces", runLab},
	}
}

func usage(cmds map[string]command) {
	fmt.Fprintf(os.Stderr, "usage: weft <command> [flags]\n\ncommands:\n")
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-12s %s\n", n, cmds[n].summary)
	}
}

func main() {
	cmds := commands()
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage(cmds)
		os.Exit(2)
	}
	cmd, ok := cmds[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "weft: unknown command %q\n", os.Args[1])
		usage(cmds)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cmd.run(ctx, os.Args[2:])
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "weft %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
