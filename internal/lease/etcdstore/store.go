// Package etcdstore keeps leases in etcd v3 in flannel's layout, so that
// weft and flannel nodes can share one cluster:
//
//	<prefix>/config                 network config JSON
//	<prefix>/subnets/10.244.1.0-24  lease.MarshalAttrs value, bound to an etcd lease
//
// A subnet key bound to no etcd lease is a reservation: it never expires and
// belongs to the node whose PublicIP it names.
package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lease"
)

// Defaults, as flannel's.
const (
	DefaultPrefix = "/coreos.com/network"
	DefaultTTL    = 24 * time.Hour
)

// Options configures a Store. Zero values take the defaults.
type Options struct {
	Prefix string        // DefaultPrefix when empty
	TTL    time.Duration // lifetime of a lease between renewals; DefaultTTL when zero
	Logger *slog.Logger  // slog.Default() when nil
}

// Store is a lease.Store over an etcd v3 client. It is safe for concurrent
// use; it keeps no state besides its options, so any number of Stores (or
// processes) may share one cluster.
type Store struct {
	cli     *clientv3.Client
	prefix  string
	subnets string // <prefix>/subnets/
	ttl     time.Duration
	log     *slog.Logger
}

var _ lease.Store = (*Store)(nil)

// New returns a Store using cli, which the caller keeps owning and closes.
func New(cli *clientv3.Client, opts Options) *Store {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.TTL <= 0 {
		opts.TTL = DefaultTTL
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	prefix := strings.TrimRight(opts.Prefix, "/")
	return &Store{
		cli:     cli,
		prefix:  prefix,
		subnets: prefix + "/subnets/",
		ttl:     opts.TTL,
		log:     opts.Logger,
	}
}

// ConfigKey is where the network config JSON lives.
func (s *Store) ConfigKey() string { return s.prefix + "/config" }

// SubnetsPrefix is the prefix every lease key starts with, <prefix>/subnets/
// (for tools that list the raw keys, such as weft doctor).
func (s *Store) SubnetsPrefix() string { return s.subnets }

// LeaseKey is the etcd key of l.
func (s *Store) LeaseKey(l lease.Lease) string { return s.subnets + l.Key() }

// NetworkConfig returns the raw network config JSON, or lease.ErrNoConfig.
func (s *Store) NetworkConfig(ctx context.Context) ([]byte, error) {
	resp, err := s.cli.Get(ctx, s.ConfigKey())
	if err != nil {
		return nil, fmt.Errorf("read network config %s: %w", s.ConfigKey(), err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("%s: %w", s.ConfigKey(), lease.ErrNoConfig)
	}
	return resp.Kvs[0].Value, nil
}

// Renew extends l's etcd lease. A reservation is returned unchanged. It
// fails when the key is gone, its etcd lease has expired, or the key now
// names another node; the agent then acquires again.
func (s *Store) Renew(ctx context.Context, l lease.Lease) (lease.Lease, error) {
	if l.Reservation() {
		return l, nil
	}
	key := s.LeaseKey(l)
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("renew lease %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return lease.Lease{}, fmt.Errorf("renew lease %s: the key is gone (expired or deleted)", key)
	}
	kv := resp.Kvs[0]
	cur, err := s.parse(kv)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("renew lease %s: %w", key, err)
	}
	if !lease.SameNode(l.Attrs, cur.Attrs) {
		return lease.Lease{}, fmt.Errorf("renew lease %s: now held by %s", key, cur.Attrs.PublicIP)
	}
	if kv.Lease == 0 {
		// Someone turned our lease into a reservation: nothing to extend.
		return cur, nil
	}
	ka, err := s.cli.KeepAliveOnce(ctx, clientv3.LeaseID(kv.Lease))
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return lease.Lease{}, fmt.Errorf("renew lease %s: etcd lease %x expired", key, kv.Lease)
	}
	if err != nil {
		return lease.Lease{}, fmt.Errorf("renew lease %s: %w", key, err)
	}
	cur.Expiration = time.Now().Add(time.Duration(ka.TTL) * time.Second)
	return cur, nil
}

// parse turns a subnet key-value into a Lease with no Expiration.
func (s *Store) parse(kv *mvccpb.KeyValue) (lease.Lease, error) {
	name := strings.TrimPrefix(string(kv.Key), s.subnets)
	v4, v6, err := lease.ParseKey(name)
	if err != nil {
		return lease.Lease{}, err
	}
	// One subnet, one key: a second spelling of a key ("FD00::-64" beside
	// "fd00::-64") would overwrite its lease here, and its deletion
	// delete it. flannel and weft write the canonical one.
	if canon := lease.Key(v4, v6); name != canon {
		return lease.Lease{}, fmt.Errorf("subnet key %q is not in canonical form (%q)", lease.Clip(name), canon)
	}
	attrs, err := lease.UnmarshalAttrs(kv.Value)
	if err != nil {
		return lease.Lease{}, err
	}
	return lease.Lease{Subnet: v4, IPv6Subnet: v6, Attrs: attrs, Created: kv.CreateRevision}, nil
}

// expiration is when the etcd lease id runs out: zero for a reservation
// (id 0), now when it has already expired.
func (s *Store) expiration(ctx context.Context, id int64) (time.Time, error) {
	if id == 0 {
		return time.Time{}, nil
	}
	resp, err := s.cli.TimeToLive(ctx, clientv3.LeaseID(id))
	if err != nil {
		return time.Time{}, fmt.Errorf("etcd lease %x: %w", id, err)
	}
	return time.Now().Add(time.Duration(max(resp.TTL, 0)) * time.Second), nil
}

// ttlSeconds rounds the TTL up to etcd's unit.
func (s *Store) ttlSeconds() int64 {
	return int64(math.Ceil(s.ttl.Seconds()))
}

// Ping reads the config key's existence, linearizably: it fails while the
// cluster has no quorum, as every write would.
func (s *Store) Ping(ctx context.Context) error {
	if _, err := s.cli.Get(ctx, s.ConfigKey(), clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	return nil
}
