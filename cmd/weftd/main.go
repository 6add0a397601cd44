// Command weftd is the weft node agent, a drop-in for flanneld: same
// flags, same FLANNELD_* variables, same etcd layout and subnet file.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/weft-net/weft/internal/agentflags"
	"github.com/weft-net/weft/internal/buildinfo"
	"github.com/weft-net/weft/internal/daemon"
)

// version is set at link time by the Makefile:
// -ldflags "-X main.version=$(git describe --tags --always --dirty)".
var version = ""

// weftdGCPercent is the agent's GOGC unless the environment sets one.
const weftdGCPercent = 50

func main() {
	// Parse's usage and flag's own messages go to a buffer: --help prints
	// it to stdout; an error is one line on stderr.
	var usage bytes.Buffer
	s, err := agentflags.Parse(os.Args[1:], os.Environ(), &usage)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Stdout.Write(usage.Bytes())
		os.Exit(0)
	case errors.Is(err, agentflags.ErrVersion):
		fmt.Println(buildinfo.Version(version))
		os.Exit(0)
	case err != nil:
		for _, w := range s.Warnings {
			fmt.Fprintf(os.Stderr, "weftd: warning: %s\n", w)
		}
		// As flanneld: 2 for a command line that does not parse, 1 for
		// values it cannot run with.
		if errors.Is(err, agentflags.ErrInvalid) {
			fmt.Fprintf(os.Stderr, "weftd: %v\n", err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "weftd: %v (see weftd --help)\n", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: s.LogLevel}))
	// client-go logs through klog: into the same log.
	klog.SetSlogLogger(log)
	for _, w := range s.Warnings {
		log.Warn(w)
	}
	o := daemon.Options{Options: s.Options, Logger: log, Version: buildinfo.Version(version)}

	// The heap is mostly the lease set, long lived; memory is what a node
	// agent is short of (a DaemonSet's limit), and the collector's work
	// is small beside the netlink it waits on. At 5,000 leases this takes
	// the peak RSS from 52 to 46 MiB, start-up unchanged (make bench).
	// GOGC in the environment still decides.
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(weftdGCPercent)
	}
	// SIGINT and SIGTERM end the run cleanly; the datapath stays so that
	// pods keep talking until the next weftd takes over.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	log.Info("weftd starting", "version", o.Version)
	err = daemon.Run(ctx, o)
	// A new net-conf (a ConfigMap update) is applied by running again;
	// the datapath stays in place in between.
	for errors.Is(err, daemon.ErrConfigChanged) {
		log.Info("running again with the new network config")
		err = daemon.Run(ctx, o)
	}
	stop()
	if err != nil {
		log.Error("weftd stopped", "err", err)
		os.Exit(1)
	}
	log.Info("weftd stopped")
}
