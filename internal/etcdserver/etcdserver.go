// Package etcdserver runs an etcd member (etcd's own embed package) for one
// machine or the lab, so weft needs no separately installed etcd: alone or
// as one member of a cluster, over plain HTTP or TLS with client
// certificates, with etcd's own user/password authentication.
package etcdserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"github.com/weft-net/weft/internal/pki"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
	"go.uber.org/zap"
)

// DefaultReadyTimeout bounds how long Start waits for the member to serve.
const DefaultReadyTimeout = 60 * time.Second

// Config describes the member, with etcd's flag names. URLs are http:// or
// https:// with host:port.
type Config struct {
	Name                string
	DataDir             string
	ListenClientURLs    []string
	AdvertiseClientURLs []string // ListenClientURLs when empty
	ListenPeerURLs      []string
	// AdvertisePeerURLs is --initial-advertise-peer-urls; ListenPeerURLs
	// when empty.
	AdvertisePeerURLs []string
	// InitialCluster is --initial-cluster, name=peerURL,...; when empty the
	// member is a cluster of its own (Name=AdvertisePeerURLs).
	InitialCluster string
	// InitialClusterState is "new" (default) or "existing" (a member added
	// to a running cluster with `etcdctl member add`).
	InitialClusterState string
	InitialClusterToken string // etcd's default when empty

	ClientTLS TLS // https:// client URLs
	PeerTLS   TLS // https:// peer URLs

	ReadyTimeout time.Duration // DefaultReadyTimeout when zero
	Logger       *slog.Logger  // slog.Default() when nil
}

// TLS is one side's certificates: --cert-file, --key-file,
// --trusted-ca-file and --client-cert-auth (or the --peer-* ones).
type TLS struct {
	CertFile       string
	KeyFile        string
	TrustedCAFile  string // CA that signs the certificates clients present
	ClientCertAuth bool   // refuse clients without a certificate TrustedCAFile signed
}

func (t TLS) empty() bool { return t == TLS{} }

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
		if cfg.InitialCluster != "" {
			return nil, fmt.Errorf("etcd %s not ready after %v: are a majority of the members of %s up and reachable (data dir %s)?", cfg.Name, timeout, cfg.InitialCluster, cfg.DataDir)
		}
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
	ap := lp
	if len(cfg.AdvertisePeerURLs) > 0 {
		if ap, err = parseURLs("initial advertise peer", cfg.AdvertisePeerURLs); err != nil {
			return nil, err
		}
	}
	client, err := tlsInfo("", cfg.ClientTLS, lc)
	if err != nil {
		return nil, err
	}
	peer, err := tlsInfo("peer-", cfg.PeerTLS, lp)
	if err != nil {
		return nil, err
	}
	e := embed.NewConfig()
	e.Name, e.Dir = cfg.Name, cfg.DataDir
	e.ListenClientUrls, e.AdvertiseClientUrls = lc, ac
	e.ListenPeerUrls, e.AdvertisePeerUrls = lp, ap
	e.ClientTLSInfo, e.PeerTLSInfo = client, peer
	e.InitialCluster = cfg.InitialCluster
	if e.InitialCluster == "" {
		e.InitialCluster = e.InitialClusterFromName(cfg.Name)
	}
	switch cfg.InitialClusterState {
	case "", embed.ClusterStateFlagNew:
		e.ClusterState = embed.ClusterStateFlagNew
	case embed.ClusterStateFlagExisting:
		e.ClusterState = embed.ClusterStateFlagExisting
	default:
		return nil, fmt.Errorf("etcd: initial cluster state %q: want %s or %s", cfg.InitialClusterState,
			embed.ClusterStateFlagNew, embed.ClusterStateFlagExisting)
	}
	if cfg.InitialClusterToken != "" {
		e.InitialClusterToken = cfg.InitialClusterToken
	}
	// etcd logs every start step at info; zl passes on warnings and errors.
	e.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zl)
	// Leases are renewed by rewriting keys, so history grows without bound
	// unless compacted. Watchers further behind than this re-list.
	e.AutoCompactionMode, e.AutoCompactionRetention = embed.CompactorModePeriodic, "1h"
	return e, nil
}

// tlsInfo checks one side's TLS files before etcd reads them, so that a
// missing or mismatched file is named with its flag (etcd's own errors
// often name neither).
func tlsInfo(flag string, t TLS, urls []url.URL) (transport.TLSInfo, error) {
	side := "client"
	if flag != "" {
		side = "peer"
	}
	https := false
	for _, u := range urls {
		https = https || u.Scheme == "https"
	}
	if t.empty() {
		if https {
			return transport.TLSInfo{}, fmt.Errorf("etcd: https:// %s URLs need --%scert-file and --%skey-file", side, flag, flag)
		}
		return transport.TLSInfo{}, nil
	}
	if !https {
		return transport.TLSInfo{}, fmt.Errorf("etcd: --%scert-file, --%skey-file and --%strusted-ca-file need https:// listen %s URLs", flag, flag, flag, side)
	}
	if t.CertFile == "" || t.KeyFile == "" {
		return transport.TLSInfo{}, fmt.Errorf("etcd: TLS needs both --%scert-file and --%skey-file", flag, flag)
	}
	if _, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile); err != nil {
		return transport.TLSInfo{}, fmt.Errorf("etcd: --%scert-file %s, --%skey-file %s: %w", flag, t.CertFile, flag, t.KeyFile, err)
	}
	if t.ClientCertAuth && t.TrustedCAFile == "" {
		return transport.TLSInfo{}, fmt.Errorf("etcd: --%sclient-cert-auth needs --%strusted-ca-file, the CA client certificates are checked against", flag, flag)
	}
	if t.TrustedCAFile != "" {
		if err := pki.CheckCAFile(t.TrustedCAFile); err != nil {
			return transport.TLSInfo{}, fmt.Errorf("etcd: --%strusted-ca-file %s: %w", flag, t.TrustedCAFile, err)
		}
	}
	return transport.TLSInfo{CertFile: t.CertFile, KeyFile: t.KeyFile, TrustedCAFile: t.TrustedCAFile,
		ClientCertAuth: t.ClientCertAuth}, nil
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
