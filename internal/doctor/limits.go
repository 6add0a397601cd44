package doctor

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/weft-net/weft/internal/backend/udp"
	"github.com/weft-net/weft/internal/backend/wireguard"
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

// datapathSockets names what in weftd listens on UDP itself and on which
// ports: the udp datapath, or wireguard-go (its conn.NewDefaultBind is the
// same StdNetBind, asking for udp.SocketBuffer); "" for backends the
// kernel forwards with no socket of weftd's (vxlan, host-gw, the kernel's
// WireGuard device, which receives in the kernel).
func datapathSockets(n *config.Network, links []Link) (who string, ports []int) {
	if n == nil {
		return "", nil
	}
	switch n.Backend.Type {
	case config.BackendUDP:
		return "the udp datapath", []int{n.Backend.Port}
	case config.BackendWireGuard:
		for _, d := range wireguard.Devices(n) {
			if slices.ContainsFunc(links, func(l Link) bool { return l.Name == d.Name && l.Kind == "wireguard" }) {
				return "", nil
			}
			ports = append(ports, d.Port)
		}
		return "wireguard-go", ports
	}
	return "", nil
}

// socketBuffers compares the buffers weftd's datapath sockets got with
// what they ask for (udp.SocketBuffer): a smaller one overflows on bursts
// and drops packets (netstat -su: receive buffer errors). The sockets ask
// with SO_RCVBUF/SO_SNDBUF, which net.core.rmem_max/wmem_max cap, then
// with SO_RCVBUFFORCE/SO_SNDBUFFORCE, which pass the cap when weftd has
// CAP_NET_ADMIN (as it does as root): so the sockets' own sizes are the
// verdict, and the sysctls only when no socket is found.
func (e *eval) socketBuffers() {
	who, ports := datapathSockets(e.net, e.f.Node.Links)
	if who == "" {
		return
	}
	want := udp.SocketBuffer
	sys := e.f.Node.Sysctls
	rs, rok := sys[sysRmemMax]
	ws, wok := sys[sysWmemMax]
	r, w := atoi(rs), atoi(ws)
	limits := fmt.Sprintf("net.core.rmem_max = %d, wmem_max = %d", r, w)
	capped := rok && wok && (r < want || w < want)
	fix := fmt.Sprintf("sysctl -w net.core.rmem_max=%d net.core.wmem_max=%d, persist it in /etc/sysctl.d/, then restart weftd", want, want)
	var ps []string
	for _, p := range ports {
		ps = append(ps, strconv.Itoa(p))
	}
	on := "UDP " + strings.Join(ps, ", ")

	if socks := e.f.Node.DatapathSockets; len(socks) > 0 {
		// The kernel reports twice the size set: its bookkeeping counts.
		rcv, snd := socks[0].RcvBuf/2, socks[0].SndBuf/2
		for _, s := range socks[1:] {
			rcv, snd = min(rcv, s.RcvBuf/2), min(snd, s.SndBuf/2)
		}
		sockets := "socket"
		if len(socks) > 1 {
			sockets = "sockets" // IPv4 and IPv6, or one per WireGuard device
		}
		msg := fmt.Sprintf("weftd's %s on %s got %d-byte receive and %d-byte send buffers", sockets, on, rcv, snd)
		switch {
		case rcv >= want && snd >= want && capped:
			e.add("socket-buffers", OK, fmt.Sprintf("%s, the %d %s asks for: %s does not cap them, since weftd has CAP_NET_ADMIN (SO_RCVBUFFORCE/SO_SNDBUFFORCE)", msg, want, who, limits), "")
		case rcv >= want && snd >= want:
			e.add("socket-buffers", OK, fmt.Sprintf("%s, the %d %s asks for", msg, want, who), "")
		case capped:
			e.add("socket-buffers", Warn, fmt.Sprintf("%s, below the %d %s asks for: %s caps them, and weftd lacks CAP_NET_ADMIN to pass the cap (SO_RCVBUFFORCE); bursts overflow a smaller buffer and drop", msg, want, who, limits),
				fix+", or run weftd with CAP_NET_ADMIN")
		default:
			e.add("socket-buffers", Warn, fmt.Sprintf("%s, below the %d %s asks for; bursts overflow a smaller buffer and drop", msg, want, who),
				"restart weftd; if they stay small, see its log")
		}
		return
	}
	none := "no weftd socket on " + on + " to read (see agent)"
	if err := e.f.Node.DatapathSocketsErr; err != nil {
		none = err.Error()
	}
	switch {
	case !rok || !wok:
		e.add("socket-buffers", Skip, "cannot read net.core.rmem_max / wmem_max, and "+none, "")
	case !capped:
		e.add("socket-buffers", OK, fmt.Sprintf("%s ≥ the %d bytes %s asks for (%s)", limits, want, who, none), "")
	default:
		low := "both are"
		if r >= want {
			low = "wmem_max is"
		} else if w >= want {
			low = "rmem_max is"
		}
		e.add("socket-buffers", Warn,
			fmt.Sprintf("%s: %s below the %d bytes %s asks for, which caps its sockets unless weftd has CAP_NET_ADMIN (SO_RCVBUFFORCE); %s, so what they got is unknown", limits, low, want, who, none),
			fix)
	}
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
