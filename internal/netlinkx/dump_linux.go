package netlinkx

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The route, neighbour and FDB dumps of a full pass (three entries per
// lease: 15,000 at 5,000 leases) are read here, into a buffer reused from
// one read to the next, and decoded in place into this package's types.
// The library's dump allocates a receive buffer per read, a message list,
// and per entry a struct, its attribute list and its addresses: at 5,000
// leases that was 15 MB for one pass, most of what the agent allocated,
// and what set its peak heap.

// attrType masks the flags off a route attribute's type.
const attrType = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)

// eachAttr calls f on each route attribute (struct rtattr) of b, in
// order; it stops at one that is malformed.
func eachAttr(b []byte, f func(typ uint16, v []byte)) {
	ne := nl.NativeEndian()
	for len(b) >= unix.SizeofRtAttr {
		l := int(ne.Uint16(b[0:2]))
		if l < unix.SizeofRtAttr || l > len(b) {
			return
		}
		f(ne.Uint16(b[2:4])&attrType, b[unix.SizeofRtAttr:l])
		next := (l + unix.RTA_ALIGNTO - 1) &^ (unix.RTA_ALIGNTO - 1)
		if next >= len(b) {
			return
		}
		b = b[next:]
	}
}

// decodeRoute decodes one RTM_NEWROUTE of a dump (struct rtmsg and its
// attributes) as RouteList lists it, with the library's filtering: ok is
// false for a route of another family or link, a cloned one, one outside
// the table f asks for (by default the main table), and any but a unicast
// single-path route (weft makes no others, and so never changes them).
func decodeRoute(m []byte, f RouteFilter) (r Route, ok bool) {
	if len(m) < unix.SizeofRtMsg {
		return Route{}, false
	}
	family, dstLen, table, typ := m[0], m[1], m[4], m[7]
	flags := nl.NativeEndian().Uint32(m[8:12])
	switch {
	case f.Family != FamilyAll && int(family) != int(f.Family),
		flags&unix.RTM_F_CLONED != 0,
		table != unix.RT_TABLE_MAIN && f.Table == 0,
		typ != unix.RTN_UNICAST:
		return Route{}, false
	}
	r = Route{Table: int(table), OnLink: flags&unix.RTNH_F_ONLINK != 0}
	var dst []byte
	multipath := false
	eachAttr(m[unix.SizeofRtMsg:], func(t uint16, v []byte) {
		switch t {
		case unix.RTA_DST:
			dst = v
		case unix.RTA_GATEWAY:
			r.Gw = fromIP(v)
		case unix.RTA_OIF:
			if len(v) >= 4 {
				r.LinkIndex = int(nl.NativeEndian().Uint32(v))
			}
		case unix.RTA_PRIORITY:
			if len(v) >= 4 {
				r.Priority = int(nl.NativeEndian().Uint32(v))
			}
		case unix.RTA_TABLE: // tables past 255
			if len(v) >= 4 {
				r.Table = int(nl.NativeEndian().Uint32(v))
			}
		case unix.RTA_MULTIPATH:
			multipath = true
		}
	})
	if multipath || (f.LinkIndex != 0 && r.LinkIndex != f.LinkIndex) ||
		(f.Table > 0 && r.Table != f.Table) {
		return Route{}, false
	}
	switch {
	case dst != nil:
		a := fromIP(dst)
		if !a.IsValid() {
			return Route{}, false
		}
		if r.Dst = netip.PrefixFrom(a, int(dstLen)); !r.Dst.IsValid() {
			return Route{}, false
		}
	case family == unix.AF_INET:
		r.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	case family == unix.AF_INET6:
		r.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	default:
		return Route{}, false
	}
	if r.Table == unix.RT_TABLE_MAIN {
		r.Table = 0
	}
	if family == unix.AF_INET6 && r.Priority == ip6DefaultMetric {
		// The kernel stores an IPv6 route added with metric 0 as
		// 1024: the same route, read back as it was written.
		r.Priority = 0
	}
	return r, true
}

// neighEntry is one decoded RTM_NEWNEIGH (struct ndmsg and the attributes
// weft reads): IP is NDA_DST, invalid when absent; lladdr is NDA_LLADDR,
// in the receive buffer.
type neighEntry struct {
	family    uint8
	linkIndex int
	state     int
	ip        netip.Addr
	lladdr    []byte
}

// mac is the entry's link-layer address; zero unless it is a MAC.
func (e neighEntry) mac() MAC {
	m, _ := MACFrom(e.lladdr)
	return m
}

// decodeNeigh decodes one RTM_NEWNEIGH of a dump; ok is false for a
// message too short to be one.
func decodeNeigh(m []byte) (e neighEntry, ok bool) {
	if len(m) < unix.SizeofNdMsg {
		return neighEntry{}, false
	}
	ne := nl.NativeEndian()
	// struct ndmsg: family u8, 3 bytes of padding, ifindex s32, state
	// u16, flags u8, type u8.
	e = neighEntry{family: m[0], linkIndex: int(int32(ne.Uint32(m[4:8]))), state: int(ne.Uint16(m[8:10]))}
	eachAttr(m[unix.SizeofNdMsg:], func(t uint16, v []byte) {
		switch t {
		case unix.NDA_DST:
			e.ip = fromIP(v)
		case unix.NDA_LLADDR:
			e.lladdr = v
		}
	})
	return e, true
}

// dumpEach sends a dump request of type typ for family, whose header
// (struct rtmsg, ndmsg, …) is hdrLen bytes, on the batch socket, and calls
// f on each answer of type answer, its payload in place in the receive
// buffer (valid only during the call). An interrupted dump (the table
// changed while it was read) is read to its end and then
// netlink.ErrDumpInterrupted, as from the library, for retry to repeat.
func (h *Handle) dumpEach(typ, answer uint16, family uint8, hdrLen int, f func(m []byte)) error {
	h.bmu.Lock()
	defer h.bmu.Unlock()
	bs := h.bs
	ne := nl.NativeEndian()
	bs.seq++
	seq := bs.seq
	req := make([]byte, unix.NLMSG_HDRLEN+hdrLen)
	ne.PutUint32(req[0:4], uint32(len(req)))
	ne.PutUint16(req[4:6], typ)
	ne.PutUint16(req[6:8], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:12], seq)
	req[unix.NLMSG_HDRLEN] = family // the first byte of either header
	fd := bs.s.GetFd()
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink write: %w", err)
	}
	interrupted := false
	for {
		// The kernel fills a dump's reads up to 32 KiB (netlink_recvmsg
		// caps its allocation there); rbuf is larger.
		n, _, rflags, _, err := unix.Recvmsg(fd, bs.rbuf, nil, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("netlink read: %w", err)
		}
		if rflags&unix.MSG_TRUNC != 0 {
			return fmt.Errorf("netlink read: message larger than %d bytes", len(bs.rbuf))
		}
		b := bs.rbuf[:n]
		for len(b) >= unix.NLMSG_HDRLEN {
			l := int(ne.Uint32(b[0:4]))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return fmt.Errorf("netlink read: malformed message (%d of %d bytes)", l, len(b))
			}
			mtype, mflags, mseq := ne.Uint16(b[4:6]), ne.Uint16(b[6:8]), ne.Uint32(b[8:12])
			m := b[unix.NLMSG_HDRLEN:l]
			b = b[min((l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1), len(b)):]
			if mseq != seq {
				continue // a late answer to an earlier batch write
			}
			if mflags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch mtype {
			case unix.NLMSG_ERROR: // the request refused
				return ackError(syscall.NetlinkMessage{Header: syscall.NlMsghdr{Flags: mflags}, Data: m})
			case unix.NLMSG_DONE: // its payload, if any: the dump's errno
				if len(m) >= 4 {
					if errno := int32(ne.Uint32(m[:4])); errno < 0 {
						return syscall.Errno(-errno)
					}
				}
				if interrupted {
					return netlink.ErrDumpInterrupted
				}
				return nil
			case answer:
				f(m)
			}
		}
	}
}
