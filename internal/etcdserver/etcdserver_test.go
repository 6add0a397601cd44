package etcdserver

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weft-net/weft/internal/etcdtest"
)

func testConfig(t *testing.T, dir string) Config {
	return Config{
		Name:             "test",
		DataDir:          dir,
		ListenClientURLs: []string{etcdtest.FreeURL(t)},
		ListenPeerURLs:   []string{etcdtest.FreeURL(t)},
	}
}

func dial(t *testing.T, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestRunServesAndStops(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etcd")
	cfg := testConfig(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()

	cli := dial(t, cfg.ListenClientURLs)
	opCtx, opCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer opCancel()
	if _, err := cli.Put(opCtx, "/weft/test", "hello"); err != nil {
		t.Fatalf("put: %v", err)
	}
	resp, err := cli.Get(opCtx, "/weft/test")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "hello" {
		t.Fatalf("get: %v %v", resp, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	short, shortCancel := context.WithTimeout(context.Background(), time.Second)
	defer shortCancel()
	if _, err := cli.Get(short, "/weft/test"); err == nil {
		t.Fatal("server still answers after Run returned")
	}

	// The data survives a restart on the same directory.
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	inproc := s.Client()
	defer inproc.Close()
	resp, err = inproc.Get(opCtx, "/weft/test")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "hello" {
		t.Fatalf("get after restart: %v %v", resp, err)
	}
	if got := s.ClientURLs(); len(got) != 1 || got[0] != cfg.ListenClientURLs[0] {
		t.Errorf("ClientURLs = %v, want %v", got, cfg.ListenClientURLs)
	}
	s.Close()
	s.Close() // idempotent
}

func TestStartPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cfg := testConfig(t, t.TempDir())
	cfg.ListenClientURLs = []string{"http://" + l.Addr().String()}
	begin := time.Now()
	s, err := Start(cfg)
	if err == nil {
		s.Close()
		t.Fatal("Start on a port in use succeeded")
	}
	if !strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Errorf("error does not say what is wrong: %v", err)
	}
	if time.Since(begin) > 10*time.Second {
		t.Errorf("took %v to fail", time.Since(begin))
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no name", func(c *Config) { c.Name = "" }, "name"},
		{"no data dir", func(c *Config) { c.DataDir = "" }, "data dir"},
		{"no client url", func(c *Config) { c.ListenClientURLs = nil }, "no listen client URL"},
		{"no port", func(c *Config) { c.ListenPeerURLs = []string{"http://127.0.0.1"} }, "host:port"},
		{"bad scheme", func(c *Config) { c.AdvertiseClientURLs = []string{"unix:///run/etcd.sock"} }, "advertise client"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Name: "x", DataDir: "/nonexistent", ListenClientURLs: []string{"http://127.0.0.1:1"},
				ListenPeerURLs: []string{"http://127.0.0.1:2"}}
			tc.mod(&cfg)
			if _, err := Start(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start: %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestParseURLsSplitsCommas(t *testing.T) {
	got, err := parseURLs("x", []string{"http://127.0.0.1:2379, http://[::1]:2379", "https://10.0.0.1:2379"})
	if err != nil || len(got) != 3 || got[1].Host != "[::1]:2379" || got[2].Scheme != "https" {
		t.Fatalf("parseURLs = %v, %v", got, err)
	}
}

func httpsURL(u string) string { return "https://" + strings.TrimPrefix(u, "http://") }

func tlsClient(t *testing.T, endpoints []string, cert, key, ca string) *clientv3.Client {
	t.Helper()
	info := transport.TLSInfo{CertFile: cert, KeyFile: key, TrustedCAFile: ca}
	tc, err := info.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, TLS: tc, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TLS with client-certificate authentication, as etcd's --cert-file,
// --key-file, --trusted-ca-file and --client-cert-auth.
func TestClientTLS(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	p := etcdtest.NewPKI(t, t.TempDir(), etcdtest.Addr(t, cfg.ListenClientURLs[0]))
	cfg.ListenClientURLs = []string{httpsURL(cfg.ListenClientURLs[0])}
	cfg.ClientTLS = TLS{CertFile: p.ServerCert, KeyFile: p.ServerKey, TrustedCAFile: p.CA, ClientCertAuth: true}
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if got := s.ClientURLs(); len(got) != 1 || !strings.HasPrefix(got[0], "https://") {
		t.Fatalf("ClientURLs = %v", got)
	}
	if _, err := tlsClient(t, s.ClientURLs(), p.ClientCert, p.ClientKey, p.CA).Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put with a client certificate: %v", err)
	}
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	defer cancelShort()
	if _, err := tlsClient(t, s.ClientURLs(), "", "", p.CA).Get(short, "k"); err == nil {
		t.Fatal("a client without a certificate was served")
	}
}

func TestTLSConfigErrors(t *testing.T) {
	p := etcdtest.NewPKI(t, t.TempDir())
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"https without cert", func(c *Config) {}, "https:// client URLs need --cert-file and --key-file"},
		{"key of another cert", func(c *Config) {
			c.ClientTLS = TLS{CertFile: p.ServerCert, KeyFile: p.OtherKey}
		}, "--key-file " + p.OtherKey + ": tls: private key does not match public key"},
		{"client-cert-auth without CA", func(c *Config) {
			c.ClientTLS = TLS{CertFile: p.ServerCert, KeyFile: p.ServerKey, ClientCertAuth: true}
		}, "--client-cert-auth needs --trusted-ca-file"},
		{"CA not a certificate", func(c *Config) {
			c.ClientTLS = TLS{CertFile: p.ServerCert, KeyFile: p.ServerKey, TrustedCAFile: p.ServerKey}
		}, "--trusted-ca-file " + p.ServerKey + ": no PEM certificate"},
		{"peer TLS on http", func(c *Config) {
			c.ClientTLS = TLS{CertFile: p.ServerCert, KeyFile: p.ServerKey}
			c.PeerTLS = TLS{CertFile: p.ServerCert, KeyFile: p.ServerKey}
		}, "--peer-cert-file, --peer-key-file and --peer-trusted-ca-file need https:// listen peer URLs"},
		{"cluster state", func(c *Config) {
			c.ClientTLS = TLS{CertFile: p.ServerCert, KeyFile: p.ServerKey}
			c.InitialClusterState = "old"
		}, `initial cluster state "old"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Name: "x", DataDir: "/nonexistent", ListenClientURLs: []string{"https://127.0.0.1:1"},
				ListenPeerURLs: []string{"http://127.0.0.1:2"}}
			tc.mod(&cfg)
			if _, err := Start(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start: %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

// Three members with peer TLS: one down, the cluster serves; two down, it
// does not; all back, it serves again with the data kept.
func TestThreeMemberCluster(t *testing.T) {
	var cfgs []Config
	var ips []netip.Addr
	for i := range 3 {
		c := testConfig(t, filepath.Join(t.TempDir(), "data"))
		c.Name = fmt.Sprintf("m%d", i+1)
		ips = append(ips, etcdtest.Addr(t, c.ListenPeerURLs[0]), etcdtest.Addr(t, c.ListenClientURLs[0]))
		cfgs = append(cfgs, c)
	}
	p := etcdtest.NewPKI(t, t.TempDir(), ips...)
	var members []string
	for i := range cfgs {
		cfgs[i].ListenPeerURLs = []string{httpsURL(cfgs[i].ListenPeerURLs[0])}
		members = append(members, cfgs[i].Name+"="+cfgs[i].ListenPeerURLs[0])
		cfgs[i].PeerTLS = TLS{CertFile: p.ServerCert, KeyFile: p.ServerKey, TrustedCAFile: p.CA, ClientCertAuth: true}
	}
	var endpoints []string
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(members, ",")
		cfgs[i].InitialClusterToken = "test-" + t.Name()
		endpoints = append(endpoints, cfgs[i].ListenClientURLs[0])
	}
	start := func(idx ...int) []*Server {
		out := make([]*Server, len(idx))
		errs := make([]error, len(idx))
		var wg sync.WaitGroup
		for k, i := range idx {
			wg.Go(func() { out[k], errs[k] = Start(cfgs[i]) })
		}
		wg.Wait()
		for k, err := range errs {
			if err != nil {
				t.Fatalf("member %s: %v", cfgs[idx[k]].Name, err)
			}
			t.Cleanup(out[k].Close)
		}
		return out
	}
	s := start(0, 1, 2)
	cli := dial(t, endpoints)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v1"); err != nil {
		t.Fatal(err)
	}
	if resp, err := cli.MemberList(ctx); err != nil || len(resp.Members) != 3 {
		t.Fatalf("member list: %v %v", resp, err)
	}
	s[0].Close()
	if _, err := cli.Put(ctx, "k", "v2"); err != nil {
		t.Fatalf("put with one member down: %v", err)
	}
	s[1].Close()
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	defer cancelShort()
	if _, err := cli.Put(short, "k", "v3"); err == nil {
		t.Fatal("put with two of three members down succeeded")
	}
	start(0, 1)
	// The refused put may still commit once there is a quorum again
	// (raft kept the proposal): v2 or v3, never lost.
	resp, err := cli.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || (string(resp.Kvs[0].Value) != "v2" && string(resp.Kvs[0].Value) != "v3") {
		t.Fatalf("get after the members came back: %v %v", resp, err)
	}
	if _, err := cli.Put(ctx, "k", "v4"); err != nil {
		t.Fatalf("put after the members came back: %v", err)
	}
}

// A member added to a running cluster, as `etcdctl member add` and
// --initial-cluster-state existing do.
func TestJoinExistingCluster(t *testing.T) {
	first := testConfig(t, t.TempDir())
	first.Name = "m1"
	s1, err := Start(first)
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	cli := dial(t, first.ListenClientURLs)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	second := testConfig(t, t.TempDir())
	second.Name = "m2"
	if _, err := cli.MemberAdd(ctx, second.ListenPeerURLs); err != nil {
		t.Fatal(err)
	}
	second.InitialCluster = "m1=" + first.ListenPeerURLs[0] + ",m2=" + second.ListenPeerURLs[0]
	second.InitialClusterState = "existing"
	s2, err := Start(second)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	resp, err := dial(t, second.ListenClientURLs).Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get from the new member: %v %v", resp, err)
	}
	if m, err := cli.MemberList(ctx); err != nil || len(m.Members) != 2 {
		t.Fatalf("members: %v %v", m, err)
	}
}
