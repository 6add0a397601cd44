// Package backend defines what the agent asks of a datapath. Each backend
// (vxlan, host-gw, udp) lives in its own package: pure code that computes
// the desired kernel state from the lease set, and a _linux.go applier that
// converges the kernel to it.
package backend

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netif"
)

// PodLink is what pods' interfaces must be configured with.
type PodLink struct {
	MTU int
	// GSOIPv4MaxSize, when above 65536, lets pods build IPv4 GSO packets
	// that large (BIG TCP): it is set on the pod's interface, its host
	// end and the bridge. 0 keeps the kernel's default.
	GSOIPv4MaxSize int
}

// LegacyGSOMaxSize is the kernel's default and, without BIG TCP, largest
// GSO packet: 64 KiB.
const LegacyGSOMaxSize = 65536

// Params is what every backend is built from.
type Params struct {
	Network *config.Network
	// Ext is the underlay interface, as netif chose it.
	Ext netif.External
	// VtepMAC, when set, is the VTEP MAC this node published before (the
	// Kubernetes store keeps it in the node's backend-data annotation): a
	// VXLAN device made anew takes it, so that the other nodes' neighbour
	// and FDB entries stay right across a reboot.
	VtepMAC net.HardwareAddr
	// VtepMACv6 is the same for flannel-v6.<VNI> (backend-v6-data).
	VtepMACv6 net.HardwareAddr
}

// PublicIPv6 is what this node publishes as its IPv6 address: own's
// PublicIPv6, else the underlay's (invalid without IPv6).
func (p Params) PublicIPv6(own lease.Lease) netip.Addr {
	if own.Attrs.PublicIPv6 != nil && own.Attrs.PublicIPv6.IsValid() {
		return *own.Attrs.PublicIPv6
	}
	return p.Ext.PublicIPv6
}

// PublicIP is what this node publishes as its address: own's PublicIP,
// else the underlay's.
func (p Params) PublicIP(own lease.Lease) netip.Addr {
	if own.Attrs.PublicIP.IsValid() {
		return own.Attrs.PublicIP
	}
	return p.Ext.PublicIP
}

// Backend is one datapath on this node. Calls come from one goroutine.
type Backend interface {
	// LeaseAttrs prepares what must exist before this node's lease is
	// acquired (the vxlan device and its MAC) and returns the BackendType
	// and BackendData to publish. Called once at start; keeps an existing
	// device so that a restart publishes the same data.
	LeaseAttrs(ctx context.Context) (typ string, data json.RawMessage, err error)

	// Configure sets the datapath up for this node's own lease and returns
	// what pods' interfaces must be configured with.
	Configure(ctx context.Context, own lease.Lease) (PodLink, error)

	// Reconcile converges the datapath to what the lease set asks for:
	// device present and configured for own, one route (and neighbour, FDB
	// entry) per remote lease, none for leases that are gone. leases holds
	// every lease, own included. With full it compares against the kernel
	// and repairs anything changed behind its back; without, it may apply
	// just the difference from its previous call. Idempotent.
	Reconcile(ctx context.Context, own lease.Lease, leases []lease.Lease, full bool) error

	// Close stops goroutines the backend runs (the udp datapath). It leaves
	// kernel state in place so that pods keep talking across a restart.
	Close() error
}

// V6Backend is a Backend that publishes BackendV6Data for the IPv6 half of
// a dual-stack or IPv6-only lease (vxlan: flannel-v6.<VNI>'s VtepMAC). A
// backend without it publishes none, as flannel's host-gw does.
type V6Backend interface {
	// LeaseV6Data is the BackendV6Data to publish, valid after LeaseAttrs;
	// nil when the network has no IPv6.
	LeaseV6Data() json.RawMessage
}

// Updater is a Backend that can apply a few lease changes in time
// proportional to them, however large the cluster: no lease set to walk,
// no kernel table to dump.
type Updater interface {
	// Update applies evs, the watch's events since the previous Reconcile
	// or Update, in order. It returns ErrStale when it has nothing
	// reconciled to apply them to (no successful Reconcile for own since
	// its last failure); the caller then reconciles in full.
	Update(ctx context.Context, own lease.Lease, evs []lease.Event) error
}

// Identifier is a Backend whose leases carry something two nodes cannot
// share (vxlan's VtepMAC: one FDB entry per MAC). The daemon's admission
// lets the older of two leases that claim one identity win, so a stale or
// hostile copy cannot take a real node's traffic.
type Identifier interface {
	Identities(l lease.Lease) []string
}

// Devicer is a Backend with devices of its own (vxlan's flannel.<VNI>):
// the agent watches them, and repairs at once what is deleted on them.
type Devicer interface {
	Devices() []string
}

// ErrStale is Update's answer when only a Reconcile will do.
var ErrStale = errors.New("no reconciled state to update")

// MetricsExporter is implemented by a backend that has metrics of its own
// (the udp datapath's counters). The agent registers the collectors on
// its /metrics once, right after building the backend.
type MetricsExporter interface {
	// Collectors returns the backend's collectors; their metric names
	// start with weft_<backend>_ so that they collide with no other.
	Collectors() []prometheus.Collector
}
