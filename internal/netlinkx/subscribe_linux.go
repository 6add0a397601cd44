package netlinkx

import (
	"context"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RouteEvent is one route added or removed, stamped when it was read off
// the socket.
type RouteEvent struct {
	Route   Route
	Deleted bool
	At      time.Time
}

// subscribeBuffer is the socket's receive buffer: a thousand routes
// programmed in a burst must not overflow it (ENOBUFS ends the
// subscription).
const subscribeBuffer = 8 << 20

// SubscribeRoutes is `ip monitor route` in the namespace at nsPath: IPv4
// and IPv6 unicast routes of every table as the kernel adds and removes
// them, until ctx ends. The channel is closed when the subscription ends;
// an error ending it early (the socket overflowed) goes to onErr, if set.
func SubscribeRoutes(ctx context.Context, nsPath string, onErr func(error)) (<-chan RouteEvent, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer ns.Close() // the socket keeps the namespace
	raw := make(chan netlink.RouteUpdate, 4096)
	done := make(chan struct{})
	cb := func(err error) {
		// Closing the socket at the end fails the pending receive.
		if onErr != nil && ctx.Err() == nil {
			onErr(err)
		}
	}
	err = netlink.RouteSubscribeWithOptions(raw, done, netlink.RouteSubscribeOptions{
		Namespace:              &ns,
		ErrorCallback:          cb,
		ReceiveBufferSize:      subscribeBuffer,
		ReceiveBufferForceSize: true,
	})
	if err != nil {
		close(done)
		return nil, fmt.Errorf("subscribe to routes in %s: %w", nsPath, err)
	}
	out := make(chan RouteEvent, 4096)
	go func() {
		<-ctx.Done()
		close(done)
	}()
	go func() {
		defer close(out)
		for u := range raw {
			at := time.Now()
			if u.Type != unix.RTM_NEWROUTE && u.Type != unix.RTM_DELROUTE {
				continue
			}
			if u.Route.Type != unix.RTN_UNICAST || len(u.Route.MultiPath) > 0 {
				continue
			}
			r := Route{
				Gw:        fromIP(u.Route.Gw),
				LinkIndex: u.Route.LinkIndex,
				OnLink:    u.Route.Flags&int(netlink.FLAG_ONLINK) != 0,
				Priority:  u.Route.Priority,
				Table:     u.Route.Table,
			}
			if r.Table == unix.RT_TABLE_MAIN {
				r.Table = 0
			}
			d, ok := fromIPNet(u.Route.Dst)
			if !ok {
				continue
			}
			r.Dst = d
			select {
			case out <- RouteEvent{Route: r, Deleted: u.Type == unix.RTM_DELROUTE, At: at}:
			case <-ctx.Done():
				// Keep draining raw so that its sender can finish.
			}
		}
	}()
	return out, nil
}
