package backend

import (
	"fmt"
	"log/slog"
	"net/netip"
)

// Diff says how to take the entries in current to those in desired, for
// kernel tables whose entries are identified by key (routes by destination,
// neighbours by IP, FDB entries by MAC). put holds the desired entries that
// are missing or differ: a replace writes each in place. del holds the
// current entries that are not desired and whose key is not being put (a
// replace already overwrites those), limited to the ones owned allows
// removing; nil owned allows all. No entry may appear twice in one slice.
func Diff[T comparable, K comparable](current, desired []T, key func(T) K, owned func(T) bool) (put, del []T) {
	// Incremental callers pass two outputs of one deterministic computation,
	// which share a long prefix and suffix; skip those before hashing.
	for len(current) > 0 && len(desired) > 0 && current[0] == desired[0] {
		current, desired = current[1:], desired[1:]
	}
	for len(current) > 0 && len(desired) > 0 && current[len(current)-1] == desired[len(desired)-1] {
		current, desired = current[:len(current)-1], desired[:len(desired)-1]
	}
	// One set, of the current entries not (yet) found desired: at
	// thousands of entries a full pass's diffs are most of what it
	// allocates, and a set per side would be twice that.
	unwanted := make(map[T]struct{}, len(current))
	for _, c := range current {
		unwanted[c] = struct{}{}
	}
	for _, d := range desired {
		if _, ok := unwanted[d]; ok {
			delete(unwanted, d)
			continue
		}
		put = append(put, d)
	}
	if len(unwanted) == 0 {
		return put, nil // at start-up: everything to put, nothing to delete
	}
	putKeys := make(map[K]struct{}, len(put))
	for _, p := range put {
		putKeys[key(p)] = struct{}{}
	}
	for _, c := range current {
		if _, ok := unwanted[c]; !ok || (owned != nil && !owned(c)) {
			continue
		}
		if _, ok := putKeys[key(c)]; !ok {
			del = append(del, c)
		}
	}
	return put, del
}

// Manages reports whether a route to dst is one a backend may change: a
// subnet strictly inside the cluster network other than this node's own.
// Routes to anything else belong to someone else.
func Manages(network, own, dst netip.Prefix) bool {
	return network.IsValid() && dst.Bits() > network.Bits() && network.Contains(dst.Addr()) &&
		dst.Masked() != own.Masked()
}

// LeaseError says why a backend did not program a remote lease.
type LeaseError struct {
	Subnet netip.Prefix
	Err    error
	// Key, when set, tells apart leases that claim one subnet (keys of
	// two families); SkipLog keeps one verdict per Key, else per Subnet.
	Key string
}

func (e *LeaseError) id() string {
	if e.Key != "" {
		return e.Key
	}
	return e.Subnet.String()
}

func (e *LeaseError) Error() string { return fmt.Sprintf("lease %s: %v", e.Subnet, e.Err) }
func (e *LeaseError) Unwrap() error { return e.Err }

// SkipLog logs leases a backend skips, each once per distinct reason, so
// that a periodic resync does not repeat the same warning forever. Not safe
// for concurrent use (backends are called from one goroutine).
type SkipLog struct {
	last map[string]string // by LeaseError.id
}

// Set records one lease's verdict, logging it when it is a new reason; a
// nil e.Err (programmed, or gone) forgets the lease. It reports whether
// it logged.
func (s *SkipLog) Set(log *slog.Logger, e *LeaseError) bool {
	id := e.id()
	if e.Err == nil {
		delete(s.last, id)
		return false
	}
	msg := e.Err.Error()
	logged := s.last[id] != msg
	if logged {
		log.Warn("lease not programmed", e.attrs(msg)...)
	}
	if s.last == nil {
		s.last = map[string]string{}
	}
	s.last[id] = msg
	return logged
}

func (e *LeaseError) attrs(reason string) []any {
	if e.Key != "" {
		return []any{"subnet", e.Subnet, "key", e.Key, "reason", reason}
	}
	return []any{"subnet", e.Subnet, "reason", reason}
}

// Report logs the errors in errs not reported by the previous call, and
// forgets leases no longer skipped. It returns how many it logged.
func (s *SkipLog) Report(log *slog.Logger, errs []*LeaseError) int {
	next := make(map[string]string, len(errs))
	n := 0
	for _, e := range errs {
		msg, id := e.Err.Error(), e.id()
		next[id] = msg
		if s.last[id] != msg {
			n++
			log.Warn("lease not programmed", e.attrs(msg)...)
		}
	}
	s.last = next
	return n
}

// Len is how many leases are being skipped.
func (s *SkipLog) Len() int { return len(s.last) }
