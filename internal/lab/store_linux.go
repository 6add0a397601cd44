package lab

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// StoreClient returns an etcd client for the lab's store, for tests and
// benchmarks that read or write leases as an operator would. The store
// listens only inside the control namespace, so every connection the client
// makes is dialed from a thread switched into that namespace; a socket stays
// in the namespace it was made in, whichever thread uses it later. The
// caller closes the client.
func (l *Lab) StoreClient(ctx context.Context) (*clientv3.Client, error) {
	path := nsPath(l.ControlNS)
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.WithNetNSPath(path, func(ns.NetNS) error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			return err
		})
		return c, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{l.State.EtcdEndpoint},
		DialTimeout: 5 * time.Second,
		Context:     ctx,
		Logger:      zap.NewNop(),
		// Applied after the client's own options, so this dialer wins.
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(dial)},
	})
	if err != nil {
		return nil, fmt.Errorf("lab %s: etcd client: %w", l.Name, err)
	}
	return cli, nil
}

// Readyz asks node i's agent for /readyz and returns the status code and
// the start of the body.
func (l *Lab) Readyz(ctx context.Context, i int) (int, string, error) {
	n := l.node(i)
	return httpGetInNS(ctx, n.NS, net.JoinHostPort("127.0.0.1", strconv.Itoa(healthzPort)), readyPath)
}

// Healthz asks node i's agent for /healthz and returns the status code and
// the start of the body.
func (l *Lab) Healthz(ctx context.Context, i int) (int, string, error) {
	n := l.node(i)
	return httpGetInNS(ctx, n.NS, net.JoinHostPort("127.0.0.1", strconv.Itoa(healthzPort)), "/healthz")
}
