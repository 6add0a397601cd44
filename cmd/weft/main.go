// Command weft is the operator's tool: an embedded etcd server for one
// machine, the multi-node lab, diagnostics and the CNI installer.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/weft-net/weft/internal/buildinfo"
)

// version is set at link time by the Makefile:
// -ldflags "-X main.version=$(git describe --tags --always --dirty)".
var version = ""

// weft is the command tree.
func weft() *group {
	return &group{
		path: "weft",
		about: `weft is the operator's tool for weft, a flannel-compatible container
network fabric (node agent weftd, CNI plugin weft-cni).`,
		footer: "Run 'weft <command> --help' for a command's flags.",
		cmds: []subcommand{
			{name: "doctor", summary: "diagnose this node: store, agent, config, subnet file, datapath", run: runDoctor},
			{name: "etcd", summary: "run a single-member embedded etcd server", run: runEtcd},
			{name: "install-cni", summary: "install the CNI plugin and conflist", run: runInstallCNI},
			{name: "lab", summary: "run a multi-node lab in network namespaces", group: labGroup()},
			{name: "status", summary: "the cluster as this node sees it: one row per lease", run: runStatus},
			{name: "version", summary: "print weft's version", run: runVersion},
		},
	}
}

func main() {
	args := os.Args[1:]
	if len(args) == 1 && (args[0] == "--version" || args[0] == "-version") {
		args = []string{"version"}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := weft().run(ctx, args)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

func runVersion(_ context.Context, args []string) error {
	fs := newFlags("weft version", "", `Prints the version of this weft binary: the one the Makefile linked in
(git describe), else the module version or commit Go recorded.`)
	if err := fs.parseNoArgs(args); err != nil {
		return err
	}
	fmt.Println(buildinfo.Version(version))
	return nil
}
