package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weft-net/weft/internal/etcdtest"
	"github.com/weft-net/weft/internal/lease/etcdstore"
)

const etcdTestNetConf = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`

// startEtcdCommand runs `weft etcd args...` until the returned cancel.
func startEtcdCommand(t *testing.T, args ...string) (client string, cancel func() error) {
	t.Helper()
	client = etcdtest.FreeURL(t)
	args = append([]string{"--listen-client-urls", client, "--listen-peer-urls", etcdtest.FreeURL(t)}, args...)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runEtcd(ctx, args) }()
	stopped := false
	cancel = func() error {
		stopped = true
		stop()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			t.Fatal("weft etcd did not exit after cancel")
			return nil
		}
	}
	t.Cleanup(func() {
		if !stopped {
			cancel()
		}
	})
	return client, cancel
}

func TestEtcdCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	client, cancel := startEtcdCommand(t, "--name", "lab", "--data-dir", dir,
		"--network-config", etcdTestNetConf, "--etcd-prefix", "/weft/test")
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{client}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, ctxCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ctxCancel()

	// The config is written right after start; wait for it.
	var got string
	for got == "" && ctx.Err() == nil {
		if resp, err := cli.Get(ctx, "/weft/test/config"); err == nil && len(resp.Kvs) == 1 {
			got = string(resp.Kvs[0].Value)
		} else {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if got != etcdTestNetConf {
		t.Fatalf("config key = %q, want %q", got, etcdTestNetConf)
	}
	if _, err := cli.Put(ctx, "/weft/test/subnets/10.244.1.0-24", `{"PublicIP":"192.0.2.1","PublicIPv6":null}`); err != nil {
		t.Fatal(err)
	}
	if resp, err := cli.Get(ctx, "/weft/test/subnets/10.244.1.0-24"); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get: %v %v", resp, err)
	}
	// An operator's edit survives a restart with --network-config.
	if _, err := cli.Put(ctx, "/weft/test/config", `{"Network":"10.99.0.0/16"}`); err != nil {
		t.Fatal(err)
	}
	if err := cancel(); err != nil {
		t.Fatalf("weft etcd after cancel: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "member")); err != nil {
		t.Errorf("no member data under --data-dir: %v", err)
	}

	confFile := filepath.Join(t.TempDir(), "net-conf.json")
	if err := os.WriteFile(confFile, []byte(etcdTestNetConf), 0o644); err != nil {
		t.Fatal(err)
	}
	client, cancel = startEtcdCommand(t, "--name", "lab", "--data-dir", dir,
		"--network-config", "@"+confFile, "--etcd-prefix", "/weft/test")
	cli2, err := clientv3.New(clientv3.Config{Endpoints: []string{client}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli2.Close()
	resp, err := cli2.Get(ctx, "/weft/test/config")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != `{"Network":"10.99.0.0/16"}` {
		t.Fatalf("config after restart: %v %v; want the operator's edit kept", resp, err)
	}
	if resp, err := cli2.Get(ctx, "/weft/test/subnets/10.244.1.0-24"); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("lease after restart: %v %v", resp, err)
	}
	if err := cancel(); err != nil {
		t.Fatalf("weft etcd after cancel: %v", err)
	}
}

func TestEtcdCommandRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--network-config", `{"Network":"10.244.0.0/33"}`}, "Network"},
		{[]string{"--network-config", "@" + filepath.Join(dir, "missing.json")}, "no such file"},
		{[]string{"--listen-client-urls", "127.0.0.1:2379"}, "listen client URL"},
		{[]string{"--listen-peer-urls", "ftp://127.0.0.1:2380"}, "http://host:port"},
		{[]string{"--bogus"}, "bogus"},
		{[]string{"--listen-client-urls", "https://127.0.0.1:2379"}, "need --cert-file and --key-file"},
		{[]string{"--initial-cluster-state", "maybe"}, "initial cluster state"},
		{[]string{"extra"}, "unexpected arguments"},
	} {
		args := append([]string{"--data-dir", filepath.Join(dir, "data")}, tc.args...)
		err := runEtcd(context.Background(), args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("weft etcd %q: %v, want an error mentioning %q", tc.args, err, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); err == nil {
		t.Errorf("bad input still started etcd (data dir created)")
	}
}

// etcd's TLS flags: a client with a certificate the CA signed is served,
// with the config seeded; one without is refused.
func TestEtcdCommandTLS(t *testing.T) {
	client, peer := etcdtest.FreeURL(t), etcdtest.FreeURL(t)
	p := etcdtest.NewPKI(t, t.TempDir(), etcdtest.Addr(t, client), etcdtest.Addr(t, peer))
	clientURL := "https://" + strings.TrimPrefix(client, "http://")
	peerURL := "https://" + strings.TrimPrefix(peer, "http://")
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runEtcd(ctx, []string{"--name", "m1", "--data-dir", t.TempDir(),
			"--listen-client-urls", clientURL, "--listen-peer-urls", peerURL,
			"--initial-advertise-peer-urls", peerURL, "--initial-cluster", "m1=" + peerURL,
			"--initial-cluster-state", "new", "--initial-cluster-token", "t1",
			"--cert-file", p.ServerCert, "--key-file", p.ServerKey, "--trusted-ca-file", p.CA, "--client-cert-auth",
			"--peer-cert-file", p.ServerCert, "--peer-key-file", p.ServerKey, "--peer-trusted-ca-file", p.CA, "--peer-client-cert-auth",
			"--network-config", etcdTestNetConf})
	}()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("weft etcd: %v", err)
		}
	}()
	opCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var cli *clientv3.Client
	var err error
	// Until it listens, Connect takes the endpoint as down and succeeds;
	// the config read then waits for the server.
	if cli, err = etcdstore.Connect(opCtx, etcdstore.ClientOptions{Endpoints: []string{clientURL},
		CertFile: p.ClientCert, KeyFile: p.ClientKey, CAFile: p.CA}); err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	var got string
	for got == "" && opCtx.Err() == nil {
		if resp, err := cli.Get(opCtx, etcdstore.DefaultPrefix+"/config"); err == nil && len(resp.Kvs) == 1 {
			got = string(resp.Kvs[0].Value)
		} else {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if got != etcdTestNetConf {
		t.Fatalf("config over TLS = %q", got)
	}
	if c, err := etcdstore.Connect(opCtx, etcdstore.ClientOptions{Endpoints: []string{clientURL}, CAFile: p.CA}); err == nil || !strings.Contains(err.Error(), "wants a client certificate") {
		if c != nil {
			c.Close()
		}
		t.Errorf("a client without a certificate: %v", err)
	}
}
