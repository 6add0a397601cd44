// Package etcdtest runs a real single-member etcd server (etcd's own embed
// package) on loopback ports chosen at run time, for tests.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is a running embedded etcd.
type Server struct {
	Endpoint string // http://127.x.y.z:<port>
	Etcd     *embed.Etcd

	dir          string
	client, peer url.URL
}

// Start runs a fresh etcd in t's temp dir and stops it when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// New runs a fresh etcd with its data in dir, for what outlives one test
// (a server shared by a package's tests from TestMain); the caller calls
// Close.
func New(dir string) (*Server, error) {
	var s *Server
	var err error
	// A port found free can be taken by another test before etcd binds
	// it; new ports then.
	for range 5 {
		var client, peer url.URL
		if client, err = freeURL(); err != nil {
			return nil, err
		}
		if peer, err = freeURL(); err != nil {
			return nil, err
		}
		s = &Server{Endpoint: client.String(), dir: dir, client: client, peer: peer}
		if err = s.start(); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Close stops the server. It may be called more than once.
func (s *Server) Close() {
	if s.Etcd != nil {
		s.Etcd.Close()
		s.Etcd = nil
	}
}

// Restart stops the server and starts it again on the same data and
// ports, as a member restart in production would. Clients see their
// connections break and must reconnect.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Close()
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
}

func (s *Server) start() error {
	cfg := embed.NewConfig()
	cfg.Dir = s.dir
	cfg.Name = "etcdtest"
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{s.client}, []url.URL{s.client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{s.peer}, []url.URL{s.peer}
	cfg.InitialCluster = fmt.Sprintf("%s=%s", cfg.Name, s.peer.String())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		return fmt.Errorf("etcd did not become ready in 30s")
	}
	s.Etcd = e
	return nil
}

// Client returns a client for s, closed when t ends.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{s.Endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Get(ctx, "health"); err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	return cli
}

// FreeURL is http://<address>:<port> with a port free on a loopback address
// of its own (any of 127.0.0.0/8 works on lo), where other tests' listeners
// on 127.0.0.1 cannot take it before etcd binds it; Start retries if it was
// taken all the same.
func FreeURL(t testing.TB) string {
	t.Helper()
	u, err := freeURL()
	if err != nil {
		t.Fatal(err)
	}
	return u.String()
}

func freeURL() (url.URL, error) {
	host := fmt.Sprintf("127.%d.%d.%d", rand.IntN(256), rand.IntN(256), 1+rand.IntN(254))
	l, err := net.Listen("tcp", host+":0")
	if err != nil {
		return url.URL{}, fmt.Errorf("pick port: %w", err)
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}, nil
}
