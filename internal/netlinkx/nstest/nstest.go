// Package nstest builds throwaway network namespaces for tests that need
// the kernel: each namespace has a unique name, a netlinkx.Handle on it, and
// is removed in t.Cleanup even when the test fails.
package nstest

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/weft-net/weft/internal/netlinkx"
)

// RequireRoot skips the test unless it can create namespaces.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces (run the tests as root)")
	}
}

// NS is one test network namespace.
type NS struct {
	Name  string // under /var/run/netns, unique to the run
	Path  string
	NetNS ns.NetNS
	H     *netlinkx.Handle
}

// New creates a namespace with lo up. It is removed when the test ends.
func New(t testing.TB) *NS {
	t.Helper()
	RequireRoot(t)
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		n.Close()
		if err := testutils.UnmountNS(n); err != nil {
			t.Errorf("remove netns %s: %v", n.Path(), err)
		}
	})
	h, err := netlinkx.NewAt(n.Path())
	if err != nil {
		t.Fatalf("handle: %v", err)
	}
	t.Cleanup(h.Close)
	s := &NS{Name: filepath.Base(n.Path()), Path: n.Path(), NetNS: n, H: h}
	lo := s.Link(t, "lo")
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return s
}

// Link returns the named link or fails the test.
func (s *NS) Link(t testing.TB, name string) netlinkx.Link {
	t.Helper()
	l, err := s.H.LinkByName(name)
	if err != nil {
		t.Fatalf("netns %s: %v", s.Name, err)
	}
	return l
}

// Exec runs a command inside the namespace and returns its combined output.
func (s *NS) Exec(name string, args ...string) (string, error) {
	var out []byte
	err := s.NetNS.Do(func(ns.NetNS) error {
		// The child is forked from this thread, which is in the namespace.
		var err error
		out, err = exec.Command(name, args...).CombinedOutput()
		return err
	})
	if err != nil {
		return string(out), fmt.Errorf("netns %s: %s %s: %w: %s", s.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Ping sends one echo request from src to dst inside the namespace.
func (s *NS) Ping(src, dst netip.Addr) error {
	_, err := s.Exec("ping", "-c", "1", "-W", "2", "-I", src.String(), dst.String())
	return err
}

// WaitIPv6Ready waits until no IPv6 address in the namespace is
// tentative. Without duplicate address detection an address still starts
// tentative until its link has carrier, which the kernel notices
// asynchronously; binding to it meanwhile fails with "Cannot assign
// requested address".
func (s *NS) WaitIPv6Ready(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := s.Exec("ip", "-6", "-o", "addr", "show", "tentative")
		if err == nil && strings.TrimSpace(out) == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("netns %s: IPv6 addresses still tentative after 5 s: %v\n%s", s.Name, err, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Sysctl writes a net.* sysctl inside the namespace ("net/ipv4/ip_forward").
func (s *NS) Sysctl(t testing.TB, key, value string) {
	t.Helper()
	err := s.NetNS.Do(func(ns.NetNS) error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
	if err != nil {
		t.Fatalf("netns %s: sysctl %s=%s: %v", s.Name, key, value, err)
	}
}

// Veth joins a and b by a veth pair named aName (in a) and bName (in b),
// gives each end its address (if valid) and sets both up.
func Veth(t testing.TB, a *NS, aName string, aAddr netip.Prefix, b *NS, bName string, bAddr netip.Prefix) (netlinkx.Link, netlinkx.Link) {
	t.Helper()
	la := netlinkx.NewLinkAttrs()
	la.Name = aName
	err := a.H.LinkAdd(&netlinkx.Veth{LinkAttrs: la, PeerName: bName, PeerNamespace: netlinkx.NsFd(b.NetNS.Fd())})
	if err != nil {
		t.Fatal(err)
	}
	ends := []struct {
		s    *NS
		name string
		addr netip.Prefix
	}{{a, aName, aAddr}, {b, bName, bAddr}}
	var links []netlinkx.Link
	for _, e := range ends {
		l := e.s.Link(t, e.name)
		if e.addr.IsValid() {
			if err := e.s.H.AddrReplace(l, e.addr); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.s.H.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		links = append(links, e.s.Link(t, e.name))
	}
	return links[0], links[1]
}
