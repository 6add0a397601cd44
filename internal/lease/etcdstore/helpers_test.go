package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

// logSink keeps what the store logged, to assert on warnings and to show
// the log when a test fails.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.TrimSpace(string(p)))
	return len(p), nil
}

// find returns the first logged line containing every part, or "".
func (l *logSink) find(parts ...string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
next:
	for _, line := range l.lines {
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue next
			}
		}
		return line
	}
	return ""
}

func newLog(t *testing.T) (*slog.Logger, *logSink) {
	sink := &logSink{}
	t.Cleanup(func() {
		if t.Failed() {
			sink.mu.Lock()
			defer sink.mu.Unlock()
			t.Logf("store log:\n%s", strings.Join(sink.lines, "\n"))
		}
	})
	return slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug})), sink
}

func newStore(t *testing.T, cli *clientv3.Client, ttl time.Duration) (*Store, *logSink) {
	log, sink := newLog(t)
	return New(cli, Options{TTL: ttl, Logger: log}), sink
}

func network(t testing.TB, js string) *config.Network {
	t.Helper()
	n, _, err := config.Parse([]byte(js))
	if err != nil {
		t.Fatalf("config %s: %v", js, err)
	}
	return n
}

func vxlanAttrs(ip, mac string) lease.Attrs {
	return lease.Attrs{
		PublicIP:    netip.MustParseAddr(ip),
		BackendType: "vxlan",
		BackendData: json.RawMessage(fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, mac)),
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// watch runs s.Watch until the test ends and returns the batches it
// reports.
func watch(t *testing.T, s *Store) <-chan []lease.Event {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan []lease.Event, 4096)
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx, func(evs []lease.Event) { ch <- evs }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Watch returned %v, want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Watch did not return after cancel")
		}
	})
	return ch
}

func nextBatch(t *testing.T, ch <-chan []lease.Event, within time.Duration) []lease.Event {
	t.Helper()
	select {
	case evs := <-ch:
		return evs
	case <-time.After(within):
		t.Fatalf("no watch event within %v", within)
		return nil
	}
}

func noBatch(t *testing.T, ch <-chan []lease.Event, within time.Duration) {
	t.Helper()
	select {
	case evs := <-ch:
		t.Fatalf("unexpected watch events: %s", describe(evs))
	case <-time.After(within):
	}
}

// describe renders events as "added 10.244.1.0-24 192.0.2.1; removed ...",
// sorted as the store reports them.
func describe(evs []lease.Event) string {
	var parts []string
	for _, e := range evs {
		parts = append(parts, fmt.Sprintf("%s %s %s", e.Type, e.Lease.Key(), e.Lease.Attrs.PublicIP))
	}
	return strings.Join(parts, "; ")
}

// putLeases writes count leases straight into the store in flannel's
// layout, bound to one etcd lease of ttl, as a cluster of that many nodes
// would have. Subnets are consecutive /24s from 10.(16+i/256).(i%256).0.
func putLeases(t testing.TB, cli *clientv3.Client, prefix string, count int, ttl int64) {
	t.Helper()
	ctx := context.Background()
	g, err := cli.Grant(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	const batch = 100 // below etcd's default of 128 operations per txn
	for start := 0; start < count; start += batch {
		var ops []clientv3.Op
		for i := start; i < min(start+batch, count); i++ {
			sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(16 + i/256), byte(i % 256), 0}), 24)
			val, err := lease.MarshalAttrs(vxlanAttrs(fmt.Sprintf("192.0.%d.%d", 100+i/250, 1+i%250), "c6:d2:32:6f:8f:44"))
			if err != nil {
				t.Fatal(err)
			}
			ops = append(ops, clientv3.OpPut(prefix+"/subnets/"+lease.Key(sn, netip.Prefix{}), string(val), clientv3.WithLease(g.ID)))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
}
