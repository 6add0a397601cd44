package daemon

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/backoff"
	"github.com/weft-net/weft/internal/netlinkx"
)

// watchKernel follows the kernel's changes in the agent's namespace and
// sends on out (without blocking: one pending repair is enough) a
// description of each that undoes part of the datapath, until ctx ends.
// A subscription that fails (its socket overflowed: changes were missed)
// asks for a repair and starts again.
func (d *daemon) watchKernel(ctx context.Context, out chan<- string) {
	var devices []string
	if dv, ok := d.be.(backend.Devicer); ok {
		devices = dv.Devices()
	}
	var networks []netip.Prefix
	for _, p := range []netip.Prefix{d.net.Network, d.net.IPv6Network} {
		if p.IsValid() {
			networks = append(networks, p)
		}
	}
	send := func(why string) {
		select {
		case out <- why:
		default:
		}
	}
	for attempt := 0; ctx.Err() == nil; attempt++ {
		sctx, cancel := context.WithCancel(ctx)
		lost := make(chan error, 1)
		changes, err := d.h.SubscribeChanges(sctx, func(err error) {
			select {
			case lost <- err:
			default:
			}
		})
		if err == nil {
			w := newKernelWatch(networks, devices, d.ext.Index)
			if links, err := d.h.LinkList(); err == nil {
				for _, l := range links {
					a := l.Attrs()
					w.seeLink(a.Index, a.Name, a.Flags&net.FlagUp != 0, a.MTU)
				}
			}
			if attempt > 0 {
				send("kernel change notifications resumed after a loss")
			}
			for c := range changes {
				if w.needsRepair(c) {
					send(c.String())
				}
			}
			select {
			case err = <-lost:
			default:
				err = ctx.Err()
			}
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		d.log.Warn("kernel change notifications lost; resubscribing", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff.Jittered(attempt, 100*time.Millisecond, 5*time.Second)):
		}
	}
}

// kernelWatch judges the kernel's change notifications: does a change
// undo something the datapath needs, so that it is worth a full reconcile
// now rather than at the next resync? Deletions of routes into the
// cluster network, of anything on the backend's devices, and a device or
// the underlay going down or changing MTU are; additions are not (most are
// the agent's own writes, and a full pass per added lease would make
// every event cost as much as the cluster is large). The periodic pass
// still repairs what slips through (an entry changed in place).
type kernelWatch struct {
	networks []netip.Prefix // cluster networks of the enabled families
	devices  []string       // the backend's devices, by name
	underlay int            // the underlay's ifindex

	devIndex map[int]string     // ifindex of each device seen
	links    map[int]linkStatus // last seen state of devices and the underlay
}

type linkStatus struct {
	up  bool
	mtu int
}

func newKernelWatch(networks []netip.Prefix, devices []string, underlay int) *kernelWatch {
	return &kernelWatch{networks: networks, devices: devices, underlay: underlay,
		devIndex: map[int]string{}, links: map[int]linkStatus{}}
}

// seeLink records a device's ifindex and state without judging it: the
// state the agent starts from.
func (w *kernelWatch) seeLink(index int, name string, up bool, mtu int) {
	if slices.Contains(w.devices, name) {
		w.devIndex[index] = name
	}
	if index == w.underlay || slices.Contains(w.devices, name) {
		w.links[index] = linkStatus{up, mtu}
	}
}

// needsRepair reports whether c undoes part of the datapath.
func (w *kernelWatch) needsRepair(c netlinkx.Change) bool {
	switch c.Kind {
	case netlinkx.ChangeLink:
		ours := slices.Contains(w.devices, c.LinkName)
		if !ours && c.LinkIndex != w.underlay {
			return false
		}
		if c.Deleted {
			delete(w.devIndex, c.LinkIndex)
			delete(w.links, c.LinkIndex)
			return true
		}
		if ours {
			w.devIndex[c.LinkIndex] = c.LinkName
		}
		now := linkStatus{c.Up, c.MTU}
		was, seen := w.links[c.LinkIndex]
		w.links[c.LinkIndex] = now
		// A device that appears was made by the agent; one that comes
		// back up lost its routes when it went down.
		return seen && was != now
	case netlinkx.ChangeRoute:
		if !c.Deleted {
			return false
		}
		if _, ok := w.devIndex[c.LinkIndex]; ok {
			return true
		}
		for _, n := range w.networks {
			if c.Prefix.Bits() >= n.Bits() && n.Contains(c.Prefix.Addr()) {
				return true
			}
		}
		return false
	case netlinkx.ChangeAddr, netlinkx.ChangeNeigh:
		_, ok := w.devIndex[c.LinkIndex]
		return c.Deleted && ok
	}
	return false
}
