package lab

import (
	"context"
	"net"
	"strconv"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// StoreClient returns an etcd client for the lab's store (every member;
// with EtcdTLS as root, with the agents' client certificate), for tests and
// benchmarks that read or write leases as an operator would. The store
// listens only inside the control namespace, so every connection the client
// makes is dialed from a thread switched into that namespace; a socket stays
// in the namespace it was made in, whichever thread uses it later. The
// caller closes the client.
func (l *Lab) StoreClient(ctx context.Context) (*clientv3.Client, error) {
	return l.storeClient(ctx, l.EtcdEndpoints())
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
