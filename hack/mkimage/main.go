// Command mkimage writes weft's container image as an OCI archive: Debian's
// iptables and nftables unpacked from this machine's apt, and weft's static
// binaries. `make image` runs it (go run ./hack/mkimage); it is a build
// tool, not shipped.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weft-net/weft/internal/image"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	// The cache scripts/kube-bins.sh uses too: $WEFT_CACHE, else the user's.
	cache := os.Getenv("WEFT_CACHE")
	if cache == "" {
		if d, err := os.UserCacheDir(); err == nil {
			cache = filepath.Join(d, "weft")
		}
	}
	cache = filepath.Join(cache, "image")
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	// --help prints to stdout; a bad flag is reported once, by main.
	fs.SetOutput(io.Discard)
	ref := fs.String("ref", "", "image reference with its tag, e.g. ghcr.io/weft-net/weft:v0.1.0 (required)")
	version := fs.String("version", "", "weft's version, recorded in the image's labels")
	binDir := fs.String("bin-dir", "", "directory holding static weftd, weft and weft-cni (required)")
	out := fs.String("out", "", "OCI archive to write (required)")
	cacheDir := fs.String("cache", cache, "cache of downloaded packages and built layers")
	pkgs := fs.String("packages", strings.Join(image.DefaultPackages, ","), "Debian packages of the root file system, with their dependencies")
	created := fs.String("created", "", "image creation time, Unix seconds (default: now); e.g. the commit's, for reproducible images")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fmt.Println("usage: go run ./hack/mkimage --ref REF --bin-dir DIR --out FILE [flags]")
			fs.PrintDefaults()
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *ref == "" || *binDir == "" || *out == "" {
		return errors.New("--ref, --bin-dir and --out are required")
	}
	when := time.Now()
	if *created != "" {
		s, err := strconv.ParseInt(*created, 10, 64)
		if err != nil {
			return fmt.Errorf("--created %q: %w", *created, err)
		}
		when = time.Unix(s, 0)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	res, err := image.Build(ctx, image.Options{
		Ref:      *ref,
		Version:  *version,
		BinDir:   *binDir,
		Packages: strings.Split(*pkgs, ","),
		CacheDir: *cacheDir,
		Out:      *out,
		Created:  when,
		Log:      slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s (%s)\n", *out, *ref, res.Digest, time.Since(start).Round(time.Millisecond))
	return nil
}
