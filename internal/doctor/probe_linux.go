package doctor

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	xipv4 "golang.org/x/net/ipv4"
	xipv6 "golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Sizes of the probes, as whole IP packets: the underlay and overlay
// hops send small echoes; the MTU search never goes below minProbeSize.
const (
	smallProbe   = 84 // 20 IP + 8 ICMP + 56 data, as ping sends
	minProbeSize = 576
	icmpHeaders  = 20 + 8
	// IPv6: a 40-byte header, and a minimum MTU of 1280 on every link.
	smallProbe6   = 104
	minProbeSize6 = 1280
	icmpHeaders6  = 40 + 8
)

// sizes are the probe sizes of t's family: small, the MTU search's floor.
func sizes(t ProbeTarget) (small, floor int) {
	if t.IPv6 {
		return smallProbe6, minProbeSize6
	}
	return smallProbe, minProbeSize
}

// Probe pings the peers PlanProbes picks from f, in parallel and bounded
// by o: for each, the underlay (its PublicIP), then the backend (its
// overlay address), then a don't-fragment echo of the full pod MTU, and
// when that is lost, the largest size that crosses. It only sends ICMP
// echoes from sockets it closes; it changes nothing in the kernel.
func Probe(ctx context.Context, f Facts, o ProbeOptions) *ProbeFacts {
	o = o.withDefaults()
	start := time.Now()
	targets, unmatched, notProbed := PlanProbes(f, o)
	pf := &ProbeFacts{Options: o, Unmatched: unmatched, NotProbed: notProbed, Peers: make([]PeerProbe, len(targets))}
	var wg sync.WaitGroup
	sem := make(chan struct{}, o.Parallel)
	var id [2]byte
	_, _ = rand.Read(id[:])
	base := binary.BigEndian.Uint16(id[:])
	for i, t := range targets {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			pf.Peers[i] = probePeer(ctx, t, o, base+uint16(i))
		}()
	}
	wg.Wait()
	pf.Took = time.Since(start)
	return pf
}

func probePeer(ctx context.Context, t ProbeTarget, o ProbeOptions, id uint16) PeerProbe {
	p := PeerProbe{Target: t}
	small, floor := sizes(t)
	ul, err := openPinger(t.IPv6, netip.Addr{}, id)
	if err != nil {
		p.Err = err.Error()
		return p
	}
	defer ul.Close()
	p.Underlay = ul.ping(ctx, t.PublicIP, small, o.Count, 0, o.Timeout)
	if !t.Overlay.IsValid() {
		return p
	}
	ov := ul
	if t.Source.IsValid() {
		// Sent from this node's overlay address, the reply comes back
		// through the overlay too.
		if ov, err = openPinger(t.IPv6, t.Source, id); err != nil {
			p.Err = err.Error()
			return p
		}
		defer ov.Close()
	}
	p.Overlay = ov.ping(ctx, t.Overlay, small, o.Count, 1, o.Timeout)
	if p.Overlay.Received == 0 || t.MTU <= small {
		return p
	}
	p.Full = ov.ping(ctx, t.Overlay, t.MTU, o.Count, 2, o.Timeout)
	if p.Full.Received > 0 {
		return p
	}
	// Search the largest size that crosses, one echo per step, waiting
	// a few round trips of the small probe's (bounded by o.Timeout).
	wait := min(max(10*p.Overlay.RTT, 100*time.Millisecond), o.Timeout)
	p.Largest = largestCrossing(small, floor, t.MTU, func(size int, seq uint16) bool {
		return ctx.Err() == nil && ov.ping(ctx, t.Overlay, size, 1, seq, wait).Received > 0
	})
	return p
}

// pinger is one ICMP (or ICMPv6) socket: an unprivileged ICMP datagram
// socket where net.ipv4.ping_group_range allows it (it rules both
// families), else a raw one (root). Its packets carry don't-fragment and
// ignore the path MTU cache (IP_PMTUDISC_PROBE; for IPv6 also
// IPV6_DONTFRAG, since the sender itself would fragment), so a size that
// does not fit is lost, not split.
type pinger struct {
	c   net.PacketConn
	raw bool
	v6  bool
	id  uint16
}

func openPinger(v6 bool, src netip.Addr, id uint16) (*pinger, error) {
	p := &pinger{id: id, v6: v6}
	af, proto, what := unix.AF_INET, unix.IPPROTO_ICMP, "ICMP"
	if v6 {
		af, proto, what = unix.AF_INET6, unix.IPPROTO_ICMPV6, "ICMPv6"
	}
	fd, err := unix.Socket(af, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		if fd, err = unix.Socket(af, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto); err != nil {
			return nil, fmt.Errorf("%s socket (unprivileged or raw): %w", what, err)
		}
		p.raw = true
	}
	f := os.NewFile(uintptr(fd), "icmp")
	defer f.Close() // FilePacketConn holds its own descriptor
	if v6 {
		err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_PROBE)
		if err == nil {
			err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_DONTFRAG, 1)
		}
	} else {
		err = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE)
	}
	if err != nil {
		return nil, fmt.Errorf("%s socket: don't fragment: %w", what, err)
	}
	if src.IsValid() {
		var sa unix.Sockaddr
		if v6 {
			sa = &unix.SockaddrInet6{Addr: src.As16()}
		} else {
			sa = &unix.SockaddrInet4{Addr: src.As4()}
		}
		if err := unix.Bind(fd, sa); err != nil {
			return nil, fmt.Errorf("%s socket: bind %s: %w", what, src, err)
		}
	}
	c, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("ICMP socket: %w", err)
	}
	p.c = c
	return p, nil
}

func (p *pinger) Close() error { return p.c.Close() }

// ping sends count echoes of size bytes (whole IP packet) to dst and
// waits up to timeout for the replies. stage sets the sequence numbers'
// high byte, so a late reply to an earlier hop is not counted.
func (p *pinger) ping(ctx context.Context, dst netip.Addr, size, count int, stage uint16, timeout time.Duration) Ping {
	r := Ping{Dst: dst, Size: size}
	sent := map[uint16]time.Time{}
	headers, proto := icmpHeaders, 1
	var echoType, replyType icmp.Type = xipv4.ICMPTypeEcho, xipv4.ICMPTypeEchoReply
	if p.v6 {
		// The kernel fills in an ICMPv6 checksum (it covers the IPv6
		// pseudo-header), for raw and datagram sockets alike.
		headers, proto = icmpHeaders6, 58
		echoType, replyType = xipv6.ICMPTypeEchoRequest, xipv6.ICMPTypeEchoReply
	}
	data := make([]byte, max(size-headers, 0))
	to := &net.IPAddr{IP: dst.AsSlice()}
	var dstAddr net.Addr = to
	if !p.raw {
		dstAddr = &net.UDPAddr{IP: to.IP}
	}
	for i := range count {
		seq := stage<<8 | uint16(i)
		m := icmp.Message{Type: echoType, Body: &icmp.Echo{ID: int(p.id), Seq: int(seq), Data: data}}
		b, err := m.Marshal(nil)
		if err != nil {
			r.Err = err.Error()
			return r
		}
		r.Sent++
		sent[seq] = time.Now()
		if _, err := p.c.WriteTo(b, dstAddr); err != nil && r.Err == "" {
			r.Err = sendError(err)
		}
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = p.c.SetReadDeadline(deadline)
	var total time.Duration
	buf := make([]byte, 65536)
	for len(sent) > 0 {
		n, from, err := p.c.ReadFrom(buf)
		if err != nil {
			break // the deadline: whatever did not come back is lost
		}
		if fromAddr(from) != dst {
			continue
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || m.Type != replyType {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		// A raw socket sees every echo reply in the namespace; an ICMP
		// datagram socket only its own, with the kernel's ID.
		if !ok || (p.raw && e.ID != int(p.id)) {
			continue
		}
		at, ok := sent[uint16(e.Seq)]
		if !ok {
			continue // another hop's, or a duplicate
		}
		delete(sent, uint16(e.Seq))
		total += time.Since(at)
		r.Received++
	}
	if r.Received > 0 {
		r.RTT = total / time.Duration(r.Received)
	}
	return r
}

func fromAddr(a net.Addr) netip.Addr {
	var ip net.IP
	switch a := a.(type) {
	case *net.IPAddr:
		ip = a.IP
	case *net.UDPAddr:
		ip = a.IP
	}
	ad, _ := netip.AddrFromSlice(ip)
	return ad.Unmap()
}

// sendError says why the kernel refused an echo, in the operator's words.
func sendError(err error) string {
	switch {
	case errors.Is(err, unix.ENETUNREACH), errors.Is(err, unix.EHOSTUNREACH):
		return "no route"
	case errors.Is(err, unix.EMSGSIZE):
		return "larger than the outgoing device's MTU"
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return "refused by a local firewall rule"
	}
	return err.Error()
}
