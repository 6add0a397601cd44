package lab

import (
	"context"
	"fmt"
	"net"
	"strconv"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lease/etcdstore"
)

// StoreClient returns an etcd client for the lab's store, for tests and
// benchmarks that read or write leases as an operator would. The store
// listens only inside the control namespace, so every connection the client
// makes is dialed from a thread switched into that namespace; a socket stays
// in the namespace it was made in, whichever thread uses it later. The
// caller closes the client.
func (l *Lab) StoreClient(ctx context.Context) (*clientv3.Client, error) {
	dial := dialInNS(l.ControlNS)
	cli, err := etcdstore.Connect(ctx, etcdstore.ClientOptions{Endpoints: []string{l.State.EtcdEndpoint}},
		func(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, "tcp", addr) })
	if err != nil {
		return nil, fmt.Errorf("lab %s: %w", l.Name, err)
	}
	return cli, nil
}

// Readyz asks node i's agent for /readyz and returns the status code and
// the start of the body.
func (l *Lab) Readyz(ctx context.Context, i int) (int, string, error) {
	n := l.node(i)
	return httpGetInNS(ctx, n.NS, net.JoinHostPort("127.0.0.1", strconv.Itoa(healthzPort)), readyPath, 512)
}

// Healthz asks node i's agent for /healthz and returns the status code and
// the start of the body.
func (l *Lab) Healthz(ctx context.Context, i int) (int, string, error) {
	n := l.node(i)
	return httpGetInNS(ctx, n.NS, net.JoinHostPort("127.0.0.1", strconv.Itoa(healthzPort)), "/healthz", 512)
}

// Metrics reads node i's agent's /metrics.
func (l *Lab) Metrics(ctx context.Context, i int) (int, string, error) {
	n := l.node(i)
	return httpGetInNS(ctx, n.NS, net.JoinHostPort("127.0.0.1", strconv.Itoa(healthzPort)), "/metrics", 4<<20)
}
