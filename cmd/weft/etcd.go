package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/etcdserver"
	"github.com/weft-net/weft/internal/lease/etcdstore"
)

// runEtcd is `weft etcd`: an etcd member for one machine, the lab or a
// cluster, optionally seeding the network config. Its flags are etcd's.
func runEtcd(ctx context.Context, args []string) error {
	fs := newFlags("weft etcd", "[flags]", `Runs an etcd server (etcd's own code, embedded) until interrupted: a
single member by default, or one member of a cluster (--initial-cluster).
Flags are named as etcd's. With https:// client URLs it serves TLS
(--cert-file, --key-file), and with --client-cert-auth it accepts only
clients presenting a certificate --trusted-ca-file signed; --peer-* do the
same for traffic between members. Users and passwords are etcd's own
(etcdctl user add, role grant-permission, auth enable).
--network-config seeds the network config weftd reads
(<etcd-prefix>/config) unless one is stored.`)
	name := fs.String("name", "weft", "member name")
	dataDir := fs.String("data-dir", "/var/lib/weft/etcd", "directory for etcd's data")
	listenClient := fs.String("listen-client-urls", "http://127.0.0.1:2379", "comma-separated URLs to serve clients on")
	advertiseClient := fs.String("advertise-client-urls", "", "comma-separated client URLs to advertise (default: --listen-client-urls)")
	listenPeer := fs.String("listen-peer-urls", "http://127.0.0.1:2380", "comma-separated URLs for peer traffic")
	advertisePeer := fs.String("initial-advertise-peer-urls", "", "comma-separated peer URLs to advertise to the other members (default: --listen-peer-urls)")
	initialCluster := fs.String("initial-cluster", "", "the cluster's members at bootstrap, name=peerURL,... (default: this member alone)")
	clusterState := fs.String("initial-cluster-state", "new", `"new" to bootstrap a cluster, "existing" to join a running one (after etcdctl member add)`)
	clusterToken := fs.String("initial-cluster-token", "etcd-cluster", "token that tells this cluster's bootstrap from another's")
	var client, peer etcdserver.TLS
	fs.StringVar(&client.CertFile, "cert-file", "", "server certificate for clients (https:// client URLs)")
	fs.StringVar(&client.KeyFile, "key-file", "", "key of --cert-file")
	fs.StringVar(&client.TrustedCAFile, "trusted-ca-file", "", "CA that signs client certificates")
	fs.BoolVar(&client.ClientCertAuth, "client-cert-auth", false, "accept only clients with a certificate --trusted-ca-file signed")
	fs.StringVar(&peer.CertFile, "peer-cert-file", "", "certificate for peer traffic, served and presented (https:// peer URLs)")
	fs.StringVar(&peer.KeyFile, "peer-key-file", "", "key of --peer-cert-file")
	fs.StringVar(&peer.TrustedCAFile, "peer-trusted-ca-file", "", "CA that signs the members' peer certificates")
	fs.BoolVar(&peer.ClientCertAuth, "peer-client-cert-auth", false, "accept only members with a certificate --peer-trusted-ca-file signed")
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
		AdvertisePeerURLs:   splitURLs(*advertisePeer),
		InitialCluster:      *initialCluster,
		InitialClusterState: *clusterState,
		InitialClusterToken: *clusterToken,
		ClientTLS:           client,
		PeerTLS:             peer,
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
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := cli.Txn(tctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(conf))).Commit()
	if err != nil {
		// The in-process client has no user: once auth is enabled, the
		// config is an operator's to write (etcdctl put), and the server
		// still serves.
		if e := rpctypes.Error(err); errors.Is(e, rpctypes.ErrUserEmpty) || errors.Is(e, rpctypes.ErrPermissionDenied) {
			slog.Warn("authentication is enabled: --network-config not written; write the config as a user allowed to", "key", key, "err", err)
			return nil
		}
		if ctx.Err() != nil {
			// Asked to stop while seeding (SIGTERM right after start):
			// a clean stop, the config is written at the next start.
			return nil
		}
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
