// Package lease holds what a node publishes about itself: its subnet(s), the
// key they are stored under and the attributes JSON, byte-compatible with
// flannel's. It also picks free subnets. Everything here is pure.
package lease

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Attrs is the value stored under a lease key. Field order and omitempty
// match flannel's LeaseAttrs so that Marshal produces the same bytes.
type Attrs struct {
	PublicIP      netip.Addr
	PublicIPv6    *netip.Addr
	BackendType   string          `json:",omitempty"`
	BackendData   json.RawMessage `json:",omitempty"`
	BackendV6Data json.RawMessage `json:",omitempty"`
}

// Lease is one node's claim on a subnet.
type Lease struct {
	Subnet     netip.Prefix // IPv4 subnet; invalid when IPv4 is disabled
	IPv6Subnet netip.Prefix // invalid when IPv6 is disabled
	Attrs      Attrs
	// Expiration is when the store drops the lease unless renewed. Zero for
	// a reservation, which never expires.
	Expiration time.Time
	// Created orders leases by age, as their store made them: etcd's
	// CreateRevision of the key, the Node's creation time (Unix
	// nanoseconds) in Kubernetes; smaller is older, 0 unknown. Every node,
	// and a node after a restart, judges a contest for a subnet or a
	// VtepMAC by it alike. Equal and Identical leave it out: a renewal
	// keeps it.
	Created int64
}

// Reservation reports whether the lease is a key without TTL.
func (l Lease) Reservation() bool { return l.Expiration.IsZero() }

// Key is the lease's name under <prefix>/subnets/.
func (l Lease) Key() string { return Key(l.Subnet, l.IPv6Subnet) }

// Equal reports whether two leases publish the same thing (expiration aside).
func (l Lease) Equal(o Lease) bool {
	return l.Subnet == o.Subnet && l.IPv6Subnet == o.IPv6Subnet && l.Attrs.Equal(o.Attrs)
}

// Unchanged reports whether o, read again from the store, is l as a
// watch last told it: the same publication (Equal) and the same age. A key
// deleted and written again with the same value is a younger lease.
func (l Lease) Unchanged(o Lease) bool { return l.Equal(o) && l.Created == o.Created }

// Identical reports whether l and o are the same lease byte for byte
// (expiration aside): a cheap test for "unchanged", where Equal's
// semantic comparison of BackendData would cost a JSON pass per lease.
func (l Lease) Identical(o Lease) bool {
	a, b := l.Attrs, o.Attrs
	return l.Subnet == o.Subnet && l.IPv6Subnet == o.IPv6Subnet && a.PublicIP == b.PublicIP &&
		a.BackendType == b.BackendType && bytes.Equal(a.BackendData, b.BackendData) &&
		bytes.Equal(a.BackendV6Data, b.BackendV6Data) &&
		(a.PublicIPv6 == nil) == (b.PublicIPv6 == nil) && (a.PublicIPv6 == nil || *a.PublicIPv6 == *b.PublicIPv6)
}

// Equal compares attributes semantically (BackendData by compacted bytes).
func (a Attrs) Equal(o Attrs) bool {
	if a.PublicIP != o.PublicIP || a.BackendType != o.BackendType {
		return false
	}
	if (a.PublicIPv6 == nil) != (o.PublicIPv6 == nil) || (a.PublicIPv6 != nil && *a.PublicIPv6 != *o.PublicIPv6) {
		return false
	}
	return jsonEqual(a.BackendData, o.BackendData) && jsonEqual(a.BackendV6Data, o.BackendV6Data)
}

func jsonEqual(a, b json.RawMessage) bool {
	var ca, cb bytes.Buffer
	if json.Compact(&ca, a) != nil || json.Compact(&cb, b) != nil {
		return bytes.Equal(a, b)
	}
	return bytes.Equal(ca.Bytes(), cb.Bytes())
}

// MarshalAttrs renders the stored value exactly as flannel does.
func MarshalAttrs(a Attrs) ([]byte, error) {
	if !a.PublicIP.IsValid() {
		// flannel's ip.IP4 zero value renders as 0.0.0.0, not "".
		a.PublicIP = netip.IPv4Unspecified()
	}
	return json.Marshal(a)
}

// UnmarshalAttrs parses a stored value, rejecting ones no node could use.
func UnmarshalAttrs(data []byte) (Attrs, error) {
	var a Attrs
	if err := json.Unmarshal(data, &a); err != nil {
		// The decoder quotes what it could not parse: a value of a
		// megabyte would be logged whole on every node.
		return Attrs{}, fmt.Errorf("lease value (%d bytes): %s", len(data), Clip(err.Error()))
	}
	if a.PublicIP.IsValid() && !a.PublicIP.Is4() {
		return Attrs{}, fmt.Errorf("lease value: PublicIP %s is not IPv4", a.PublicIP)
	}
	if a.PublicIPv6 != nil && !a.PublicIPv6.Is6() {
		return Attrs{}, fmt.Errorf("lease value: PublicIPv6 %s is not IPv6", a.PublicIPv6)
	}
	return a, nil
}

// clipLen is how much of a value from the store a message quotes.
const clipLen = 200

// Clip shortens s, text from the store or quoting it, for a log line.
func Clip(s string) string {
	if len(s) <= clipLen {
		return s
	}
	return fmt.Sprintf("%s… (%d bytes)", strings.ToValidUTF8(s[:clipLen], ""), len(s))
}

// Key renders a subnet key: "10.244.1.0-24", or "10.244.1.0-24&fd00:0:0:1::-64"
// for dual stack; an IPv6-only lease is keyed by its IPv6 subnet alone.
func Key(v4, v6 netip.Prefix) string {
	switch {
	case v4.IsValid() && v6.IsValid():
		return keyPart(v4) + "&" + keyPart(v6)
	case v6.IsValid():
		return keyPart(v6)
	default:
		return keyPart(v4)
	}
}

func keyPart(p netip.Prefix) string {
	return p.Addr().String() + "-" + strconv.Itoa(p.Bits())
}

var keyRE = regexp.MustCompile(`^(?:(\d+\.\d+\.\d+\.\d+)-(\d+))?(?:&?([0-9a-fA-F:]+)-(\d+))?$`)

// ParseKey is the inverse of Key. It accepts only canonical subnets (no host
// bits), since a key is also an allocation claim.
func ParseKey(key string) (v4, v6 netip.Prefix, err error) {
	m := keyRE.FindStringSubmatch(key)
	if m == nil || (m[1] == "" && m[3] == "") {
		return v4, v6, fmt.Errorf("subnet key %q: want a.b.c.d-len or a.b.c.d-len&ipv6-len", key)
	}
	if m[1] != "" {
		if v4, err = parseKeyPart(m[1], m[2], true); err != nil {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %q: %w", key, err)
		}
	}
	if m[3] != "" {
		if m[1] != "" && !bytes.Contains([]byte(key), []byte("&")) {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %q: missing '&' between subnets", key)
		}
		if v6, err = parseKeyPart(m[3], m[4], false); err != nil {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %q: %w", key, err)
		}
	}
	return v4, v6, nil
}

func parseKeyPart(addr, bits string, want4 bool) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(addr + "/" + bits)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p.Addr().Is4() != want4 {
		return netip.Prefix{}, fmt.Errorf("%s is the wrong address family", p)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s has host bits set", p)
	}
	return p, nil
}

// SameNode reports whether two attribute sets name one node: by PublicIP,
// or by PublicIPv6 when a has no IPv4 address (an IPv6-only network). It is
// the ownership rule of every store and of the agent's lease set.
func SameNode(a, b Attrs) bool {
	if a.PublicIP.IsValid() && !a.PublicIP.IsUnspecified() {
		return a.PublicIP == b.PublicIP
	}
	return a.PublicIPv6 != nil && b.PublicIPv6 != nil && *a.PublicIPv6 == *b.PublicIPv6
}

// FirstIP is the subnet's first usable address: the gateway / device address
// (10.244.1.0/24 -> 10.244.1.1). flannel writes it as FLANNEL_SUBNET.
func FirstIP(p netip.Prefix) netip.Addr { return p.Addr().Next() }

// SubnetIP is the subnet's network address, used by vxlan as the remote
// VTEP's neighbour address (10.244.1.0).
func SubnetIP(p netip.Prefix) netip.Addr { return p.Addr() }
