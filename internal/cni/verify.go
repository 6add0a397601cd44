package cni

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	current "github.com/containernetworking/cni/pkg/types/100"
)

// podExpect is what CHECK requires of the pod's interface: what ADD
// returned (addresses) and what was configured (MTU, routes).
type podExpect struct {
	IfName string
	MTU    int            // 0: not checked
	Addrs  []netip.Prefix // with the prefix length the pod has, 10.244.1.5/24
	Routes []netip.Prefix // destinations the pod must route via IfName
}

// podLink is what the pod's namespace holds for the interface.
type podLink struct {
	Found  bool
	Up     bool
	MTU    int
	Addrs  []netip.Prefix
	Routes []netip.Prefix // destinations of routes through the interface
}

// expectFromResult takes the addresses ADD gave to the interface named
// ifName inside the sandbox.
func expectFromResult(res *current.Result, ifName string) []netip.Prefix {
	var out []netip.Prefix
	for _, ipc := range res.IPs {
		if ipc.Interface == nil || *ipc.Interface < 0 || *ipc.Interface >= len(res.Interfaces) {
			continue
		}
		itf := res.Interfaces[*ipc.Interface]
		if itf.Sandbox == "" || itf.Name != ifName {
			continue
		}
		addr, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			continue
		}
		ones, _ := ipc.Address.Mask.Size()
		out = append(out, netip.PrefixFrom(addr.Unmap(), ones))
	}
	return out
}

// compare returns nil when got satisfies e, else one error naming
// everything that is missing or wrong.
func (e podExpect) compare(netns string, got podLink) error {
	if !got.Found {
		return fmt.Errorf("pod interface %s not found in netns %s", e.IfName, netns)
	}
	var problems []string
	if !got.Up {
		problems = append(problems, "interface is down")
	}
	if e.MTU != 0 && got.MTU != e.MTU {
		problems = append(problems, fmt.Sprintf("MTU is %d, want %d", got.MTU, e.MTU))
	}
	for _, a := range e.Addrs {
		if !slices.Contains(got.Addrs, a) {
			problems = append(problems, fmt.Sprintf("address %s missing", a))
		}
	}
	for _, r := range e.Routes {
		if !slices.Contains(got.Routes, r.Masked()) {
			problems = append(problems, fmt.Sprintf("route to %s missing", r.Masked()))
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("pod interface %s in netns %s: %s", e.IfName, netns, strings.Join(problems, "; "))
}
