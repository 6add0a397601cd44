package netlinkx

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ChangeKind is what a Change is about.
type ChangeKind uint8

const (
	ChangeLink ChangeKind = iota + 1
	ChangeAddr
	ChangeRoute
	ChangeNeigh // neighbours and FDB entries
)

func (k ChangeKind) String() string {
	switch k {
	case ChangeLink:
		return "link"
	case ChangeAddr:
		return "address"
	case ChangeRoute:
		return "route"
	case ChangeNeigh:
		return "neighbour"
	}
	return "change"
}

// Change is one link, address, route, neighbour or FDB entry the kernel
// added, changed or removed: enough for an agent to tell whether it
// concerns its datapath, not a copy of the object.
type Change struct {
	Kind      ChangeKind
	Deleted   bool
	LinkIndex int
	// Links: name, whether up, MTU.
	LinkName string
	Up       bool
	MTU      int
	// Routes: destination; addresses: the address.
	Prefix netip.Prefix
	At     time.Time
}

func (c Change) String() string {
	what := "added"
	if c.Deleted {
		what = "deleted"
	}
	switch c.Kind {
	case ChangeLink:
		if !c.Deleted {
			what = fmt.Sprintf("up=%v mtu=%d", c.Up, c.MTU)
		}
		return fmt.Sprintf("link %s (#%d) %s", c.LinkName, c.LinkIndex, what)
	case ChangeNeigh:
		return fmt.Sprintf("neighbour or FDB entry on #%d %s", c.LinkIndex, what)
	}
	return fmt.Sprintf("%s %s on #%d %s", c.Kind, c.Prefix, c.LinkIndex, what)
}

// SubscribeChanges is `ip monitor link address route neigh` in the
// handle's namespace, until ctx ends. The channel is closed when the
// subscription ends; an error ending it early (a socket overflowed: the
// caller missed changes and should re-read the kernel) goes to onErr.
func (h *Handle) SubscribeChanges(ctx context.Context, onErr func(error)) (<-chan Change, error) {
	ns := netns.None()
	if h.nsPath != "" {
		var err error
		if ns, err = netns.GetFromPath(h.nsPath); err != nil {
			return nil, fmt.Errorf("open netns %s: %w", h.nsPath, err)
		}
		defer ns.Close() // the sockets keep the namespace
	}
	done := make(chan struct{})
	cb := func(err error) {
		if onErr != nil && ctx.Err() == nil {
			onErr(err)
		}
	}
	// The library's updates are large (a netlink.Route is ~300 bytes):
	// they are turned into Changes as they come, and the burst a full
	// pass makes waits in the sockets' buffers (subscribeBuffer) and in
	// out, not in these. Thousands of buffered updates were megabytes
	// of heap held for good.
	links := make(chan netlink.LinkUpdate, 16)
	addrs := make(chan netlink.AddrUpdate, 16)
	routes := make(chan netlink.RouteUpdate, 64)
	neighs := make(chan netlink.NeighUpdate, 64)
	fail := func(what string, err error) (<-chan Change, error) {
		close(done)
		return nil, fmt.Errorf("subscribe to %s changes: %w", what, err)
	}
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{
		Namespace: &ns, ErrorCallback: cb, ReceiveBufferSize: subscribeBuffer, ReceiveBufferForceSize: true,
	}); err != nil {
		return fail("link", err)
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{
		Namespace: &ns, ErrorCallback: cb, ReceiveBufferSize: subscribeBuffer, ReceiveBufferForceSize: true,
	}); err != nil {
		return fail("address", err)
	}
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{
		Namespace: &ns, ErrorCallback: cb, ReceiveBufferSize: subscribeBuffer, ReceiveBufferForceSize: true,
	}); err != nil {
		return fail("route", err)
	}
	if err := netlink.NeighSubscribeWithOptions(neighs, done, netlink.NeighSubscribeOptions{
		Namespace: &ns, ErrorCallback: cb, ReceiveBufferSize: subscribeBuffer, ReceiveBufferForceSize: true,
	}); err != nil {
		return fail("neighbour", err)
	}
	go func() {
		<-ctx.Done()
		close(done)
	}()
	out := make(chan Change, 4096)
	go func() {
		defer close(out)
		// The library closes each channel when its socket is done; the
		// subscription ends when any of them does.
		for {
			var c Change
			var ok bool
			select {
			case u, open := <-links:
				if !open {
					return
				}
				a := u.Link.Attrs()
				c = Change{Kind: ChangeLink, Deleted: u.Header.Type == unix.RTM_DELLINK, LinkIndex: a.Index,
					LinkName: a.Name, Up: a.Flags&net.FlagUp != 0, MTU: a.MTU}
				ok = true
			case u, open := <-addrs:
				if !open {
					return
				}
				p, valid := fromIPNet(&u.LinkAddress)
				c = Change{Kind: ChangeAddr, Deleted: !u.NewAddr, LinkIndex: u.LinkIndex, Prefix: p}
				ok = valid
			case u, open := <-routes:
				if !open {
					return
				}
				if u.Type != unix.RTM_NEWROUTE && u.Type != unix.RTM_DELROUTE {
					continue
				}
				p, valid := fromIPNet(u.Route.Dst)
				c = Change{Kind: ChangeRoute, Deleted: u.Type == unix.RTM_DELROUTE, LinkIndex: u.Route.LinkIndex, Prefix: p}
				ok = valid
			case u, open := <-neighs:
				if !open {
					return
				}
				c = Change{Kind: ChangeNeigh, Deleted: u.Type == unix.RTM_DELNEIGH, LinkIndex: u.LinkIndex}
				ok = true
			}
			if !ok {
				continue
			}
			c.At = time.Now()
			select {
			case out <- c:
			case <-ctx.Done():
				// Keep draining so that the library's senders can finish.
			}
		}
	}()
	return out, nil
}
