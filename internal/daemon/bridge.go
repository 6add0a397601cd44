package daemon

import (
	"fmt"
	"net/netip"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

// keepBridgeRoute puts back the pod bridge's route to this node's subnet
// when it is gone or points elsewhere. The kernel adds it with the
// bridge's address (10.244.1.1/24 on cni0), and removes it for good when
// something replaces it and then goes: issue 11 found a hostile lease for
// our own subnet doing exactly that, leaving the pods unreachable after
// the lease was deleted. The bridge is the one holding the subnet's
// gateway address; without one (no pod yet) there is nothing to keep.
// It returns what it did, or "".
func keepBridgeRoute(h *netlinkx.Handle, own netip.Prefix) (string, error) {
	if !own.IsValid() {
		return "", nil
	}
	gw := netip.PrefixFrom(lease.FirstIP(own), own.Bits())
	links, err := h.LinkList()
	if err != nil {
		return "", err
	}
	for _, l := range links {
		if l.Type() != "bridge" {
			continue
		}
		addrs, err := h.AddrList(l, netlinkx.FamilyOf(own.Addr()))
		if err != nil {
			return "", err
		}
		held := false
		for _, a := range addrs {
			held = held || a == gw
		}
		if !held {
			continue
		}
		// Where does a pod's address go? Not the gateway itself: that is
		// local.
		idx := l.Attrs().Index
		got, err := h.RouteGet(lease.FirstIP(own).Next())
		if err == nil && got.LinkIndex == idx && !got.Gw.IsValid() {
			return "", nil
		}
		if err := h.RouteReplace(netlinkx.Route{Dst: own.Masked(), LinkIndex: idx}); err != nil {
			return "", fmt.Errorf("restore route %s dev %s: %w", own.Masked(), l.Attrs().Name, err)
		}
		return fmt.Sprintf("%s dev %s (was via #%d %v)", own.Masked(), l.Attrs().Name, got.LinkIndex, got.Gw), nil
	}
	return "", nil
}
