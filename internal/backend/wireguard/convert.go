package wireguard

import (
	"net"
	"net/netip"

	"github.com/weft-net/weft/internal/netlinkx"
)

// wgctrl speaks net types; weft speaks netip. These convert at the seam.

func netUDPAddr(ap netip.AddrPort) *net.UDPAddr { return net.UDPAddrFromAddrPort(ap) }

func ipNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, 0, len(ps))
	for _, p := range ps {
		out = append(out, netlinkx.IPNetOf(p))
	}
	return out
}
