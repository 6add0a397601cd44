package daemon

import (
	"net/netip"
	"testing"

	"github.com/weft-net/weft/internal/netlinkx"
)

func TestKernelWatchNeedsRepair(t *testing.T) {
	w := newKernelWatch([]netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, []string{"flannel.1"}, 2)
	w.seeLink(7, "flannel.1", true, 1450)
	w.seeLink(2, "eth0", true, 1500)
	w.seeLink(9, "cni0", true, 1450)
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		c    netlinkx.Change
		want bool
	}{
		{netlinkx.Change{Kind: netlinkx.ChangeRoute, Deleted: true, LinkIndex: 2, Prefix: p("10.244.3.0/24")}, true},   // host-gw route
		{netlinkx.Change{Kind: netlinkx.ChangeRoute, Deleted: true, LinkIndex: 7, Prefix: p("192.168.0.0/24")}, true},  // on our device
		{netlinkx.Change{Kind: netlinkx.ChangeRoute, Deleted: true, LinkIndex: 2, Prefix: p("0.0.0.0/0")}, false},      // the default route is not ours
		{netlinkx.Change{Kind: netlinkx.ChangeRoute, Deleted: false, LinkIndex: 7, Prefix: p("10.244.3.0/24")}, false}, // our own write
		{netlinkx.Change{Kind: netlinkx.ChangeNeigh, Deleted: true, LinkIndex: 7}, true},
		{netlinkx.Change{Kind: netlinkx.ChangeNeigh, Deleted: true, LinkIndex: 9}, false}, // a pod's neighbour on the bridge
		{netlinkx.Change{Kind: netlinkx.ChangeAddr, Deleted: true, LinkIndex: 7, Prefix: p("10.244.1.0/32")}, true},
		{netlinkx.Change{Kind: netlinkx.ChangeLink, LinkIndex: 7, LinkName: "flannel.1", Up: true, MTU: 1450}, false}, // unchanged
		{netlinkx.Change{Kind: netlinkx.ChangeLink, LinkIndex: 7, LinkName: "flannel.1", Up: false, MTU: 1450}, true}, // set down
		{netlinkx.Change{Kind: netlinkx.ChangeLink, LinkIndex: 9, LinkName: "cni0", Up: false, MTU: 1450}, false},
		{netlinkx.Change{Kind: netlinkx.ChangeLink, LinkIndex: 2, LinkName: "eth0", Up: true, MTU: 1400}, true}, // underlay MTU
		{netlinkx.Change{Kind: netlinkx.ChangeLink, Deleted: true, LinkIndex: 7, LinkName: "flannel.1"}, true},
		// Recreated by the agent under a new index: a new device, no repair.
		{netlinkx.Change{Kind: netlinkx.ChangeLink, LinkIndex: 11, LinkName: "flannel.1", Up: true, MTU: 1450}, false},
		{netlinkx.Change{Kind: netlinkx.ChangeNeigh, Deleted: true, LinkIndex: 11}, true}, // and followed from then on
	} {
		if got := w.needsRepair(tc.c); got != tc.want {
			t.Errorf("%s: needsRepair = %v, want %v", tc.c, got, tc.want)
		}
	}
}
