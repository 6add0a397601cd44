// Command weftd is the weft node agent, a drop-in for flanneld: same
// flags, same FLANNELD_* variables, same etcd layout and subnet file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/weft-net/weft/internal/agentflags"
	"github.com/weft-net/weft/internal/daemon"
)

// version is set at link time: -ldflags "-X main.version=v0.1.0".
var version = ""

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func main() {
	s, err := agentflags.Parse(os.Args[1:], os.Environ(), os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, agentflags.ErrVersion):
		fmt.Println(versionString())
		os.Exit(0)
	case err != nil:
		for _, w := range s.Warnings {
			fmt.Fprintf(os.Stderr, "weftd: warning: %s\n", w)
		}
		fmt.Fprintf(os.Stderr, "weftd: %v\n", err)
		// As flanneld: 2 for a command line that does not parse, 1 for
		// values it cannot run with.
		if errors.Is(err, agentflags.ErrInvalid) {
			os.Exit(1)
		}
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: s.LogLevel}))
	for _, w := range s.Warnings {
		log.Warn(w)
	}
	o := daemon.Options{Options: s.Options, Logger: log, Version: versionString()}

	// SIGINT and SIGTERM end the run cleanly; the datapath stays so that
	// pods keep talking until the next weftd takes over.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	log.Info("weftd starting", "version", o.Version)
	err = daemon.Run(ctx, o)
	stop()
	if err != nil {
		log.Error("weftd stopped", "err", err)
		os.Exit(1)
	}
	log.Info("weftd stopped")
}
