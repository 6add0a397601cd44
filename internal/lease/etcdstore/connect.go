package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
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

// Connect builds an etcd client. It does not wait for the cluster to
// answer: the first request does, so an agent can start before etcd. ctx is
// the client's default context; the caller closes the client. dial, when
// given, makes the client's connections (the lab dials from inside a
// network namespace).
func Connect(ctx context.Context, o ClientOptions, dial ...func(ctx context.Context, addr string) (net.Conn, error)) (*clientv3.Client, error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("etcd client: no endpoints")
	}
	cfg := clientv3.Config{
		Endpoints:            o.Endpoints,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    30 * time.Second,
		DialKeepAliveTimeout: 10 * time.Second,
		Username:             o.Username,
		Password:             o.Password,
		Context:              ctx,
		// The client logs every reconnect at warn; the store reports what
		// matters itself.
		Logger: zap.NewNop(),
	}
	if o.CertFile != "" || o.KeyFile != "" || o.CAFile != "" {
		if (o.CertFile == "") != (o.KeyFile == "") {
			return nil, errors.New("etcd client: a client certificate needs both the cert file and the key file")
		}
		info := transport.TLSInfo{CertFile: o.CertFile, KeyFile: o.KeyFile, TrustedCAFile: o.CAFile}
		tlsCfg, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd client TLS: %w", err)
		}
		cfg.TLS = tlsCfg
	}
	for _, d := range dial {
		// Applied after the client's own options, so this dialer wins.
		cfg.DialOptions = append(cfg.DialOptions, grpc.WithContextDialer(d))
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client %v: %w", o.Endpoints, err)
	}
	return cli, nil
}
