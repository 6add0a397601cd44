package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"

	"github.com/weft-net/weft/internal/netlinkx"
)

// addNS makes the named namespace a host: `ip netns add` (which pins it
// under /run/netns, where every other tool finds it), then its loopback up
// through netlink.
func addNS(ctx context.Context, name string) error {
	if err := ip(ctx, "netns", "add", name); err != nil {
		return err
	}
	return inNS(name, func(h *netlinkx.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	})
}

// inNS runs fn with a netlink handle on namespace name.
func inNS(name string, fn func(h *netlinkx.Handle) error) error {
	h, err := netlinkx.NewAt(nsPath(name))
	if err != nil {
		return err
	}
	defer h.Close()
	if err := fn(h); err != nil {
		return fmt.Errorf("namespace %s: %w", name, err)
	}
	return nil
}

// addBridge makes the underlay's switch, bridge name in namespace ns, up.
func addBridge(ns, name string) error {
	return inNS(ns, func(h *netlinkx.Handle) error {
		la := netlinkx.NewLinkAttrs()
		la.Name = name
		if err := h.LinkAdd(&netlinkx.Bridge{LinkAttrs: la}); err != nil {
			return err
		}
		br, err := h.LinkByName(name)
		if err != nil {
			return err
		}
		return h.LinkSetUp(br)
	})
}

// plugIn cables host peerNS to the underlay: a veth whose end port is a
// port of bridge br0 in namespace ul and whose other end is the host's
// eth0, with addrs, both up (`ip link add PORT type veth peer name eth0
// netns PEER` and the rest).
func plugIn(ul, port, peerNS string, addrs ...netip.Prefix) error {
	peer, err := os.Open(nsPath(peerNS))
	if err != nil {
		return err
	}
	defer peer.Close()
	err = inNS(ul, func(h *netlinkx.Handle) error {
		la := netlinkx.NewLinkAttrs()
		la.Name = port
		if err := h.LinkAdd(&netlinkx.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlinkx.NsFd(peer.Fd())}); err != nil {
			return err
		}
		p, err := h.LinkByName(port)
		if err != nil {
			return err
		}
		br, err := h.LinkByName("br0")
		if err != nil {
			return err
		}
		if err := h.LinkSetMaster(p, br); err != nil {
			return err
		}
		return h.LinkSetUp(p)
	})
	if err != nil {
		return err
	}
	return inNS(peerNS, func(h *netlinkx.Handle) error {
		eth0, err := h.LinkByName("eth0")
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if err := h.AddrReplace(eth0, a); err != nil {
				return err
			}
		}
		return h.LinkSetUp(eth0)
	})
}
