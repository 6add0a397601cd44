package etcdstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"github.com/weft-net/weft/internal/pki"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// ClientOptions are flanneld's --etcd-* flags.
type ClientOptions struct {
	Endpoints []string
	CertFile  string // client certificate, with KeyFile
	KeyFile   string
	CAFile    string // CA that signed the servers' certificates
	Username  string
	Password  string
}

// Dial makes a client's connections (the lab dials from inside a network
// namespace).
type Dial = func(ctx context.Context, addr string) (net.Conn, error)

const (
	dialTimeout = 5 * time.Second
	// probeTimeout bounds the TLS check at start: an endpoint that has not
	// answered by then is taken as down, not as misconfigured.
	probeTimeout = 3 * time.Second
)

// Connect builds an etcd client. Settings that cannot work are an error
// naming the flag and file or user at fault: a certificate, key or CA file
// that is missing, unreadable or mismatched; with https:// endpoints, a
// server certificate the CA did not sign or a client certificate the
// server refuses; a wrong user name or password. Otherwise it does not wait
// for the cluster: endpoints that do not answer are retried by the client,
// so an agent can start before etcd, but with a user name the client
// authenticates at once and Connect fails when no endpoint answers within
// 5 s. ctx is the client's default context; the caller closes the client.
// dial, when given, makes the client's connections.
func Connect(ctx context.Context, o ClientOptions, dial ...Dial) (*clientv3.Client, error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("etcd client: no endpoints")
	}
	cfg := clientv3.Config{
		Endpoints:            o.Endpoints,
		DialTimeout:          dialTimeout,
		DialKeepAliveTime:    30 * time.Second,
		DialKeepAliveTimeout: 10 * time.Second,
		Username:             o.Username,
		Password:             o.Password,
		Context:              ctx,
		// The client logs every reconnect at warn; the store reports what
		// matters itself.
		Logger: zap.NewNop(),
		// gRPC's reconnect backoff grows to two minutes; a member back
		// from a restart, or a cluster back from an outage, is used again
		// within a second.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 2 * time.Second,
		})},
	}
	if o.CertFile != "" || o.KeyFile != "" || o.CAFile != "" {
		tlsCfg, err := clientTLS(o)
		if err != nil {
			return nil, err
		}
		cfg.TLS = tlsCfg
	}
	var d Dial
	for _, d = range dial {
		// Applied after the client's own options, so this dialer wins.
		cfg.DialOptions = append(cfg.DialOptions, grpc.WithContextDialer(d))
	}
	if err := probeTLS(ctx, o, cfg.TLS, d); err != nil {
		return nil, err
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		switch {
		case errors.Is(rpctypes.Error(err), rpctypes.ErrAuthFailed):
			return nil, fmt.Errorf("etcd %s: user %q: authentication failed: wrong --etcd-username or --etcd-password", strings.Join(o.Endpoints, ","), o.Username)
		case o.Username != "" && o.Password != "" && errors.Is(err, context.DeadlineExceeded):
			return nil, fmt.Errorf("etcd %s: authenticating user %q: no endpoint answered within %v: %w", strings.Join(o.Endpoints, ","), o.Username, dialTimeout, err)
		}
		return nil, fmt.Errorf("etcd client %v: %w", o.Endpoints, err)
	}
	return cli, nil
}

// clientTLS reads the TLS files, naming the flag and file of what is
// wrong with them (etcd's transport names neither).
func clientTLS(o ClientOptions) (*tls.Config, error) {
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, fmt.Errorf("etcd client: a client certificate needs both the cert file and the key file (--etcd-certfile %q, --etcd-keyfile %q)", o.CertFile, o.KeyFile)
	}
	if o.CertFile != "" {
		if _, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile); err != nil {
			return nil, fmt.Errorf("etcd client certificate: --etcd-certfile %s, --etcd-keyfile %s: %w", o.CertFile, o.KeyFile, err)
		}
	}
	if o.CAFile != "" {
		if err := pki.CheckCAFile(o.CAFile); err != nil {
			return nil, fmt.Errorf("etcd CA: --etcd-cafile %s: %w", o.CAFile, err)
		}
	}
	info := transport.TLSInfo{CertFile: o.CertFile, KeyFile: o.KeyFile, TrustedCAFile: o.CAFile}
	tlsCfg, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("etcd client TLS: %w", err)
	}
	return tlsCfg, nil
}

// probeTLS shakes hands with every https:// endpoint at once, as the
// client would, so that a certificate either side refuses is an error now
// rather than requests that time out later. One endpoint that accepts is
// enough; endpoints that do not answer are no error.
func probeTLS(ctx context.Context, o ClientOptions, cfg *tls.Config, dial Dial) error {
	var hosts []string
	for _, ep := range o.Endpoints {
		if u, err := url.Parse(ep); err == nil && u.Scheme == "https" && u.Host != "" {
			hosts = append(hosts, u.Host)
		}
	}
	if len(hosts) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	if dial == nil {
		var d net.Dialer
		dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	errs := make([]error, len(hosts))
	accepted := make([]bool, len(hosts))
	var wg sync.WaitGroup
	for i, host := range hosts {
		wg.Go(func() { accepted[i], errs[i] = probeOne(ctx, o, cfg, dial, host) })
	}
	wg.Wait()
	var first error
	refused := 0
	for i, ok := range accepted {
		if ok {
			return nil
		}
		if errs[i] != nil {
			if first == nil {
				first = errs[i]
			}
			refused++
		}
	}
	if refused > 1 {
		// The same settings fail alike everywhere: say it once.
		return fmt.Errorf("%w (and %d more endpoints refused)", first, refused-1)
	}
	return first
}

// probeOne reports whether host accepted a TLS session, or the error that
// says why the settings are wrong; an endpoint that does not answer is
// neither.
func probeOne(ctx context.Context, o ClientOptions, base *tls.Config, dial Dial, host string) (bool, error) {
	raw, err := dial(ctx, host)
	if err != nil {
		return false, nil
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	cfg := &tls.Config{}
	if base != nil {
		cfg = base.Clone()
	}
	if cfg.ServerName == "" {
		if h, _, err := net.SplitHostPort(host); err == nil {
			cfg.ServerName = h
		}
	}
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		return false, describeTLSError(o, host, err)
	}
	// With TLS 1.3 the server checks the client's certificate after the
	// client's handshake is done, and says so on the first read: anything
	// but an alert (an answer, EOF, no answer in time) is acceptance.
	_, err = fmt.Fprintf(conn, "GET /version HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
	if err == nil {
		var b [1]byte
		_, err = conn.Read(b[:])
	}
	var op *net.OpError
	if err != nil && errors.As(err, &op) && op.Op == "remote error" {
		return false, describeTLSError(o, host, err)
	}
	return true, nil
}

// describeTLSError names what to fix, or returns nil for an error that
// says nothing about the settings (a timeout, a reset).
func describeTLSError(o ClientOptions, host string, err error) error {
	var unknown x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var record tls.RecordHeaderError
	var op *net.OpError
	switch {
	case errors.As(err, &unknown):
		if o.CAFile == "" {
			return fmt.Errorf("etcd https://%s: its certificate is not signed by a CA this system trusts; give the CA that signed it with --etcd-cafile: %w", host, err)
		}
		return fmt.Errorf("etcd https://%s: its certificate is not signed by the CA in --etcd-cafile %s: %w", host, o.CAFile, err)
	case errors.As(err, &hostname):
		return fmt.Errorf("etcd https://%s: its certificate is not valid for the endpoint's address: %w", host, err)
	case errors.As(err, &invalid):
		return fmt.Errorf("etcd https://%s: its certificate: %w", host, err)
	case errors.As(err, &record):
		return fmt.Errorf("etcd https://%s does not speak TLS (an http:// endpoint?): %w", host, err)
	case errors.As(err, &op) && op.Op == "remote error":
		// The server sent a TLS alert: it refused our certificate.
		if o.CertFile == "" {
			return fmt.Errorf("etcd https://%s wants a client certificate (--etcd-certfile, --etcd-keyfile): %w", host, err)
		}
		return fmt.Errorf("etcd https://%s refused the client certificate --etcd-certfile %s (not signed by the CA etcd trusts?): %w", host, o.CertFile, err)
	}
	return nil
}
