// Package etcdserver runs a single-member etcd (etcd's own embed package)
// for one machine or the lab, so weft needs no separately installed etcd.
package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
	"go.uber.org/zap"
)

// DefaultReadyTimeout bounds how long Start waits for the member to serve.
const DefaultReadyTimeout = 60 * time.Second

// Config describes the member. URLs are http:// or https:// with host:port.
type Config struct {
	Name                string
	DataDir             string
	ListenClientURLs    []string
	AdvertiseClientURLs []string // ListenClientURLs when empty
	ListenPeerURLs      []string // also advertised: the member is its own cluster

	ReadyTimeout time.Duration // DefaultReadyTimeout when zero
	Logger       *slog.Logger  // slog.Default() when nil
}

// Server is a started member.
type Server struct {
	etcd      *embed.Etcd
	urls      []string
	log       *slog.Logger
	closeOnce sync.Once // embed.Etcd.Close must not run twice
	closing   *atomic.Bool
}

// Run starts the member, serves until ctx ends, then stops it. It returns
// nil after a stop asked for by ctx, and an error if the member fails.
func Run(ctx context.Context, cfg Config) error {
	s, err := Start(cfg)
	if err != nil {
		return err
	}
	return s.Wait(ctx)
}

// Start starts the member and returns once it serves clients.
func Start(cfg Config) (*Server, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	closing := new(atomic.Bool)
	ecfg, err := embedConfig(cfg, newZapLogger(log, closing))
	if err != nil {
		return nil, err
	}
	timeout := cfg.ReadyTimeout
	if timeout <= 0 {
		timeout = DefaultReadyTimeout
	}
	e, err := embed.StartEtcd(ecfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd %s (client %s, peer %s, data %s): %w", cfg.Name,
			strings.Join(cfg.ListenClientURLs, ","), strings.Join(cfg.ListenPeerURLs, ","), cfg.DataDir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("etcd %s failed while starting: %w", cfg.Name, err)
	case <-time.After(timeout):
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("etcd %s not ready after %v (data dir %s: does it hold another cluster's member?)", cfg.Name, timeout, cfg.DataDir)
	}
	s := &Server{etcd: e, urls: urlStrings(ecfg.AdvertiseClientUrls), log: log, closing: closing}
	log.Info("etcd ready", "name", cfg.Name, "client_urls", strings.Join(s.urls, ","), "data_dir", cfg.DataDir)
	return s, nil
}

func embedConfig(cfg Config, zl *zap.Logger) (*embed.Config, error) {
	if cfg.Name == "" {
		return nil, errors.New("etcd: name is empty")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("etcd: data dir is empty")
	}
	lc, err := parseURLs("listen client", cfg.ListenClientURLs)
	if err != nil {
		return nil, err
	}
	ac := lc
	if len(cfg.AdvertiseClientURLs) > 0 {
		if ac, err = parseURLs("advertise client", cfg.AdvertiseClientURLs); err != nil {
			return nil, err
		}
	}
	lp, err := parseURLs("listen peer", cfg.ListenPeerURLs)
	if err != nil {
		return nil, err
	}
	e := embed.NewConfig()
	e.Name, e.Dir = cfg.Name, cfg.DataDir
	e.ListenClientUrls, e.AdvertiseClientUrls = lc, ac
	e.ListenPeerUrls, e.AdvertisePeerUrls = lp, lp
	e.InitialCluster = e.InitialClusterFromName(cfg.Name)
	// etcd logs every start step at info; zl passes on warnings and errors.
	e.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zl)
	// Leases are renewed by rewriting keys, so history grows without bound
	// unless compacted. Watchers further behind than this re-list.
	e.AutoCompactionMode, e.AutoCompactionRetention = embed.CompactorModePeriodic, "1h"
	return e, nil
}

func parseURLs(what string, raw []string) ([]url.URL, error) {
	var out []url.URL
	for _, r := range raw {
		for _, s := range strings.Split(r, ",") {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			u, err := url.Parse(s)
			if err != nil {
				return nil, fmt.Errorf("etcd %s URL %q: %w", what, s, err)
			}
			if (u.Scheme != "http" && u.Scheme != "https") || u.Port() == "" {
				return nil, fmt.Errorf("etcd %s URL %q: want http://host:port or https://host:port", what, s)
			}
			out = append(out, *u)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("etcd: no %s URL", what)
	}
	return out, nil
}

func urlStrings(us []url.URL) []string {
	out := make([]string, len(us))
	for i, u := range us {
		out[i] = u.String()
	}
	return out
}

// ClientURLs are the advertised client URLs.
func (s *Server) ClientURLs() []string { return s.urls }

// Client returns an in-process client, which needs no network or TLS
// settings. The caller closes it.
func (s *Server) Client() *clientv3.Client { return v3client.New(s.etcd.Server) }

// Wait serves until ctx ends or the member fails, then stops it.
func (s *Server) Wait(ctx context.Context) error {
	defer s.Close()
	select {
	case <-ctx.Done():
		s.log.Info("stopping etcd")
		return nil
	case err := <-s.etcd.Err():
		return fmt.Errorf("etcd failed: %w", err)
	case <-s.etcd.Server.StopNotify():
		return errors.New("etcd stopped unexpectedly")
	}
}

// Close stops the member. It may be called more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.closing.Store(true)
		s.etcd.Close()
	})
}
