package lease

import (
	"context"
	"errors"
	"net/netip"

	"github.com/weft-net/weft/internal/config"
)

// ErrNoConfig means the store holds no network config yet.
var ErrNoConfig = errors.New("no network config in the store")

// EventType says what happened to a lease.
type EventType int

const (
	// Added means the lease is new or its attributes changed.
	Added EventType = iota
	// Removed means the lease expired or was deleted.
	Removed
)

func (t EventType) String() string {
	if t == Removed {
		return "removed"
	}
	return "added"
}

// Event is one change to the lease set.
type Event struct {
	Type  EventType
	Lease Lease
}

// Hint carries the subnets this node used before (from the old subnet.env),
// which Acquire prefers when they are still free.
type Hint struct {
	Subnet     netip.Prefix
	IPv6Subnet netip.Prefix
}

// Store is where leases live. It is owned by the agent; implementations are
// the etcd v3 store and, later, the Kubernetes API.
type Store interface {
	// NetworkConfig returns the raw network config JSON, or ErrNoConfig.
	NetworkConfig(ctx context.Context) ([]byte, error)

	// Acquire returns this node's lease, in this order of preference: the
	// existing lease or reservation naming attrs.PublicIP (updated with
	// attrs), the hinted subnet if free, a random free subnet of the pool.
	// Creation is atomic: two nodes never hold one subnet. It returns an
	// error wrapping ErrPoolExhausted when no subnet is free.
	Acquire(ctx context.Context, n *config.Network, attrs Attrs, hint Hint) (Lease, error)

	// Renew extends l's expiration and returns the renewed lease. A
	// reservation is returned unchanged. It fails if l no longer exists.
	Renew(ctx context.Context, l Lease) (Lease, error)

	// Watch calls fn with every lease as Added events, then with each change,
	// until ctx ends. Events within one call are ordered; fn is never called
	// concurrently. Values that do not parse are logged and skipped. Watch
	// survives reconnects and compaction on its own, by re-listing and
	// reporting the difference; an error it returns before ctx ends is one
	// no retry can fix, and stops the agent. The leases it reports need
	// not carry an Expiration (etcd's would cost a call per lease), so
	// their Reservation() is not to be trusted.
	Watch(ctx context.Context, fn func([]Event)) error
}
