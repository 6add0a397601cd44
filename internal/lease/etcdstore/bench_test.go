package etcdstore

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/etcdtest"
	"github.com/weft-net/weft/internal/lease"
)

// BenchmarkAcquire is one node joining a cluster of 1,000: list, pick,
// create.
func BenchmarkAcquire(b *testing.B) {
	srv := etcdtest.Start(b)
	cli := srv.Client(b)
	s := New(cli, Options{TTL: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	putLeases(b, cli, s.prefix, 1000, 3600)
	n := network(b, `{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}`)
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		ip := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		if _, err := s.Acquire(ctx, n, vxlanAttrs(ip.String(), "c6:d2:32:6f:8f:44"), lease.Hint{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWatchSnapshot is the initial list of 1,000 leases, TTL lookups
// included.
func BenchmarkWatchSnapshot(b *testing.B) {
	srv := etcdtest.Start(b)
	cli := srv.Client(b)
	s := New(cli, Options{Logger: slog.New(slog.DiscardHandler)})
	putLeases(b, cli, s.prefix, 1000, 3600)
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		w := s.newWatcher(func([]lease.Event) {})
		if err := w.list(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
