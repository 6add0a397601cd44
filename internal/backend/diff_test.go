package backend

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

type entry struct {
	k string
	v int
}

func TestDiff(t *testing.T) {
	key := func(e entry) string { return e.k }
	current := []entry{
		{"same", 1},
		{"changed", 1},
		{"gone", 1},
		{"foreign", 1},
		{"dup", 1}, {"dup", 2}, // two values under one key: keep the desired one only
	}
	desired := []entry{{"same", 1}, {"changed", 2}, {"new", 1}, {"dup", 2}}
	owned := func(e entry) bool { return e.k != "foreign" }
	put, del := Diff(current, desired, key, owned)
	if want := []entry{{"changed", 2}, {"new", 1}}; !slices.Equal(put, want) {
		t.Errorf("put = %v, want %v", put, want)
	}
	if want := []entry{{"gone", 1}, {"dup", 1}}; !slices.Equal(del, want) {
		t.Errorf("del = %v, want %v", del, want)
	}
	// Shared prefix and suffix, as in an incremental call.
	put, del = Diff([]entry{{"a", 1}, {"b", 1}, {"c", 1}, {"z", 1}}, []entry{{"a", 1}, {"b", 2}, {"bb", 1}, {"z", 1}}, key, nil)
	if !slices.Equal(put, []entry{{"b", 2}, {"bb", 1}}) || !slices.Equal(del, []entry{{"c", 1}}) {
		t.Errorf("prefix/suffix: put %v del %v", put, del)
	}
	// An entry moved from the middle to the front is neither put nor deleted.
	put, del = Diff([]entry{{"a", 1}, {"b", 1}, {"c", 1}}, []entry{{"c", 1}, {"a", 1}, {"b", 1}}, key, nil)
	if len(put)+len(del) != 0 {
		t.Errorf("reordered: put %v del %v", put, del)
	}
	put, del = Diff(desired, desired, key, nil)
	if len(put)+len(del) != 0 {
		t.Errorf("no-op diff: put %v del %v", put, del)
	}
	put, del = Diff(current, nil, key, nil)
	if len(put) != 0 || len(del) != len(current) {
		t.Errorf("diff to empty: put %v del %v", put, del)
	}
	put, del = Diff(nil, desired, key, owned)
	if !slices.Equal(put, desired) || len(del) != 0 {
		t.Errorf("diff from empty: put %v del %v", put, del)
	}
}

func TestManages(t *testing.T) {
	p := netip.MustParsePrefix
	network, own := p("10.244.0.0/16"), p("10.244.1.0/24")
	for dst, want := range map[string]bool{
		"10.244.2.0/24": true,
		"10.244.1.0/24": false, // own
		"10.244.0.0/16": false, // the network itself is not a node's subnet
		"10.0.0.0/8":    false,
		"10.245.0.0/24": false,
		"192.0.2.0/24":  false,
		"10.244.3.7/32": true,
	} {
		if got := Manages(network, own, p(dst)); got != want {
			t.Errorf("Manages(%s) = %v, want %v", dst, got, want)
		}
	}
}

func TestSkipLogOncePerReason(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	sn := netip.MustParsePrefix("10.244.9.0/24")
	var s SkipLog
	a := []*LeaseError{{Subnet: sn, Err: errors.New("bad data")}}
	s.Report(log, a)
	s.Report(log, a)
	if n := strings.Count(buf.String(), "lease not programmed"); n != 1 {
		t.Fatalf("logged %d times, want once:\n%s", n, buf.String())
	}
	s.Report(log, []*LeaseError{{Subnet: sn, Err: errors.New("other reason")}})
	s.Report(log, nil)
	s.Report(log, a) // skipped again after recovering: log again
	if n := strings.Count(buf.String(), "lease not programmed"); n != 3 {
		t.Fatalf("logged %d times, want 3:\n%s", n, buf.String())
	}
	var le *LeaseError = a[0]
	if !strings.Contains(le.Error(), "lease 10.244.9.0/24: bad data") {
		t.Errorf("Error() = %q", le.Error())
	}
}
