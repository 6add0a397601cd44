package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/etcdserver"
	"github.com/weft-net/weft/internal/lease/etcdstore"
)

// runEtcd is `weft etcd`: a single-member etcd for one machine or the lab,
// optionally seeded with the network config.
func runEtcd(ctx context.Context, args []string) error {
	fs := newFlags("weft etcd", "[flags]", `Runs a single-member etcd server for one machine or the lab, optionally
seeding the network config weftd reads (<etcd-prefix>/config), until
interrupted.`)
	name := fs.String("name", "weft", "member name")
	dataDir := fs.String("data-dir", "/var/lib/weft/etcd", "directory for etcd's data")
	listenClient := fs.String("listen-client-urls", "http://127.0.0.1:2379", "comma-separated URLs to serve clients on")
	advertiseClient := fs.String("advertise-client-urls", "", "comma-separated client URLs to advertise (default: --listen-client-urls)")
	listenPeer := fs.String("listen-peer-urls", "http://127.0.0.1:2380", "comma-separated URLs for peer traffic")
	netConf := fs.String("network-config", "", "network config JSON, or @file; written to <etcd-prefix>/config at start unless one is there")
	prefix := fs.String("etcd-prefix", etcdstore.DefaultPrefix, "key prefix of the network config and leases")
	if err := fs.parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fs.usageErr(fmt.Errorf("unexpected arguments %q", fs.Args()))
	}

	// Check the config before starting, so a typo fails at once.
	var conf []byte
	if *netConf != "" {
		var err error
		if conf, err = readNetworkConfig(*netConf); err != nil {
			return err
		}
	}

	srv, err := etcdserver.Start(etcdserver.Config{
		Name:                *name,
		DataDir:             *dataDir,
		ListenClientURLs:    splitURLs(*listenClient),
		AdvertiseClientURLs: splitURLs(*advertiseClient),
		ListenPeerURLs:      splitURLs(*listenPeer),
	})
	if err != nil {
		return err
	}
	if conf != nil {
		if err := seedNetworkConfig(ctx, srv, *prefix, conf); err != nil {
			srv.Close()
			return err
		}
	}
	return srv.Wait(ctx)
}

// readNetworkConfig takes the JSON itself or @path, and validates it.
func readNetworkConfig(arg string) ([]byte, error) {
	conf := []byte(arg)
	if path, ok := strings.CutPrefix(arg, "@"); ok {
		var err error
		if conf, err = os.ReadFile(path); err != nil {
			return nil, fmt.Errorf("--network-config: %w", err)
		}
	}
	_, warnings, err := config.Parse(conf)
	if err != nil {
		return nil, fmt.Errorf("--network-config: %w", err)
	}
	for _, w := range warnings {
		slog.Warn("network config", "warning", w)
	}
	return conf, nil
}

// seedNetworkConfig writes conf unless a config is already stored: the
// store's copy is the one nodes use, and a restart must not overwrite an
// operator's change.
func seedNetworkConfig(ctx context.Context, srv *etcdserver.Server, prefix string, conf []byte) error {
	cli := srv.Client()
	defer cli.Close()
	key := etcdstore.New(cli, etcdstore.Options{Prefix: prefix}).ConfigKey()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(conf))).Commit()
	if err != nil {
		return fmt.Errorf("write network config %s: %w", key, err)
	}
	if resp.Succeeded {
		slog.Info("wrote network config", "key", key)
	} else {
		slog.Info("network config already stored; left as is", "key", key)
	}
	return nil
}

func splitURLs(s string) []string {
	var out []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}
