package cni

import (
	"fmt"
	"net"

	"github.com/weft-net/weft/internal/netlinkx"
)

// inspectPod reads the pod's interface through a netlink handle opened in
// the pod's namespace (no thread switches namespace).
func inspectPod(netnsPath, ifName string) (podLink, error) {
	h, err := netlinkx.NewAt(netnsPath)
	if err != nil {
		return podLink{}, err
	}
	defer h.Close()
	link, err := h.LinkByName(ifName)
	if netlinkx.IsNotFound(err) {
		return podLink{}, nil
	}
	if err != nil {
		return podLink{}, fmt.Errorf("netns %s: %w", netnsPath, err)
	}
	got := podLink{
		Found: true,
		Up:    link.Attrs().Flags&net.FlagUp != 0,
		MTU:   link.Attrs().MTU,
	}
	if got.Addrs, err = h.AddrList(link, netlinkx.FamilyAll); err != nil {
		return podLink{}, fmt.Errorf("netns %s: %w", netnsPath, err)
	}
	routes, err := h.RouteList(netlinkx.RouteFilter{LinkIndex: link.Attrs().Index})
	if err != nil {
		return podLink{}, fmt.Errorf("netns %s: %w", netnsPath, err)
	}
	for _, r := range routes {
		got.Routes = append(got.Routes, r.Dst.Masked())
	}
	return got, nil
}
