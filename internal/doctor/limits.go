package doctor

import (
	"fmt"

	"github.com/weft-net/weft/internal/backend/udp"
	"github.com/weft-net/weft/internal/config"
)

// Sysctls the kernel-limit checks read, by their path below /proc/sys.
const (
	sysRmemMax       = "net/core/rmem_max"
	sysWmemMax       = "net/core/wmem_max"
	sysConntrack     = "net/netfilter/nf_conntrack_count"
	sysConntrackMax  = "net/netfilter/nf_conntrack_max"
	conntrackWarnPct = 75
	conntrackFailPct = 90
)

// limitSysctls are read by the gatherer for kernelLimits.
var limitSysctls = []string{sysRmemMax, sysWmemMax, sysConntrack, sysConntrackMax}

// ---- 8. kernel limits ----

func (e *eval) kernelLimits() {
	e.socketBuffers()
	e.conntrack()
}

// socketBuffers compares the kernel's socket buffer limits with what the
// udp datapath asks for: a socket capped below it overflows on bursts and
// drops packets (netstat -su: receive buffer errors).
func (e *eval) socketBuffers() {
	if e.net == nil || e.net.Backend.Type != config.BackendUDP {
		return // vxlan and host-gw forward in the kernel, with no socket
	}
	sys := e.f.Node.Sysctls
	rs, rok := sys[sysRmemMax]
	ws, wok := sys[sysWmemMax]
	if !rok || !wok {
		e.add("socket-buffers", Skip, "cannot read net.core.rmem_max / wmem_max", "")
		return
	}
	r, w := atoi(rs), atoi(ws)
	msg := fmt.Sprintf("net.core.rmem_max = %d, wmem_max = %d", r, w)
	if r >= udp.SocketBuffer && w >= udp.SocketBuffer {
		e.add("socket-buffers", OK, msg+fmt.Sprintf(" ≥ the %d bytes the udp datapath asks for", udp.SocketBuffer), "")
		return
	}
	var low string
	switch {
	case r < udp.SocketBuffer && w < udp.SocketBuffer:
		low = "both are"
	case r < udp.SocketBuffer:
		low = "rmem_max is"
	default:
		low = "wmem_max is"
	}
	e.add("socket-buffers", Warn,
		fmt.Sprintf("%s: %s below the %d bytes the udp datapath asks for; weftd passes the cap only with CAP_NET_ADMIN (SO_RCVBUFFORCE), and bursts overflow a smaller buffer and drop", msg, low, udp.SocketBuffer),
		fmt.Sprintf("sysctl -w net.core.rmem_max=%d net.core.wmem_max=%d, persist it in /etc/sysctl.d/, then restart weftd", udp.SocketBuffer, udp.SocketBuffer))
}

// conntrack warns before the connection tracking table fills: once full,
// the kernel drops packets of new flows ("nf_conntrack: table full").
func (e *eval) conntrack() {
	sys := e.f.Node.Sysctls
	cs, cok := sys[sysConntrack]
	ms, mok := sys[sysConntrackMax]
	if !cok || !mok {
		return // nf_conntrack not loaded: nothing tracks, nothing fills
	}
	c, m := atoi(cs), atoi(ms)
	if m <= 0 {
		return
	}
	pct := 100 * c / m
	msg := fmt.Sprintf("conntrack table %d of %d entries (%d%%)", c, m, pct)
	hint := fmt.Sprintf("sysctl -w net.netfilter.nf_conntrack_max=%d and persist it in /etc/sysctl.d/; see who holds the entries: conntrack -S, conntrack -L", 2*m)
	switch {
	case pct >= conntrackFailPct:
		e.add("conntrack", Fail, msg+": near full, new connections are dropped once it is", hint)
	case pct >= conntrackWarnPct:
		e.add("conntrack", Warn, msg+": filling up", hint)
	default:
		e.add("conntrack", OK, msg, "")
	}
}
