package etcdserver

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
