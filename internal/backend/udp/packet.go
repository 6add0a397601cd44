package udp

import (
	"encoding/binary"
	"net/netip"
)

// IPv4 header layout (RFC 791) as offsets into the packet.
const (
	ipv4MinHeaderLen = 20
	offTotalLen      = 2
	offFlagsFrag     = 6
	offTTL           = 8
	offProto         = 9
	offChecksum      = 10
	offSrc           = 12
	offDst           = 16

	flagDF      = 0x4000
	fragOffMask = 0x1fff

	protoICMP = 1

	// ICMP types and codes the datapath sends.
	icmpDestUnreach   = 3
	icmpTimeExceeded  = 11
	codeNetUnreach    = 0
	codeFragNeeded    = 4
	codeTTLExceeded   = 0
	icmpHeaderLen     = 8
	icmpQuoteLen      = 8 // payload bytes quoted after the offending header (RFC 792)
	icmpErrorTTL      = 64
	maxICMPErrorBytes = ipv4MinHeaderLen + icmpHeaderLen + 60 + icmpQuoteLen
)

// parseResult says why a packet was refused; parseOK when it was not.
type parseResult uint8

const (
	parseOK parseResult = iota
	parseTooShort
	parseNotIPv4
	parseBadHeaderLen
	parseBadTotalLen
	parseBadChecksum
)

var parseResultNames = [...]string{"ok", "too short", "not IPv4", "bad header length", "bad total length", "bad header checksum"}

func (r parseResult) String() string {
	if int(r) < len(parseResultNames) {
		return parseResultNames[r]
	}
	return "unknown"
}

// header is what the datapath needs from an IPv4 header. Addresses are
// big-endian uint32s so that table lookups need no conversion.
type header struct {
	hlen    int // header length in bytes, options included
	tlen    int // total length: the packet is b[:tlen]
	ttl     uint8
	proto   uint8
	df      bool
	fragOff uint16 // fragment offset in 8-byte units; non-zero for all but the first fragment
	src     uint32
	dst     uint32
}

// parseIPv4 validates b as one IPv4 packet and returns its header. Bytes
// past the total length are tolerated (the caller uses b[:tlen]); a packet
// shorter than its total length, a header shorter than 20 bytes or longer
// than the packet, or a header checksum that does not verify is refused.
func parseIPv4(b []byte) (header, parseResult) {
	if len(b) < ipv4MinHeaderLen {
		if len(b) > 0 && b[0]>>4 != 4 {
			return header{}, parseNotIPv4
		}
		return header{}, parseTooShort
	}
	if b[0]>>4 != 4 {
		return header{}, parseNotIPv4
	}
	hlen := int(b[0]&0x0f) * 4
	if hlen < ipv4MinHeaderLen || hlen > len(b) {
		return header{}, parseBadHeaderLen
	}
	tlen := int(binary.BigEndian.Uint16(b[offTotalLen:]))
	if tlen < hlen || tlen > len(b) {
		return header{}, parseBadTotalLen
	}
	if checksum(b[:hlen], 0) != 0 {
		return header{}, parseBadChecksum
	}
	ff := binary.BigEndian.Uint16(b[offFlagsFrag:])
	return header{
		hlen:    hlen,
		tlen:    tlen,
		ttl:     b[offTTL],
		proto:   b[offProto],
		df:      ff&flagDF != 0,
		fragOff: ff & fragOffMask,
		src:     binary.BigEndian.Uint32(b[offSrc:]),
		dst:     binary.BigEndian.Uint32(b[offDst:]),
	}, parseOK
}

// checksum is the Internet checksum (RFC 1071) of b, folded with initial.
// Over a header that carries its checksum it returns 0 when the header is intact.
func checksum(b []byte, initial uint32) uint16 {
	sum := initial
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// decrementTTL lowers the TTL of a valid IPv4 packet by one and patches the
// header checksum incrementally (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m'))
// instead of summing the header again. The caller checks TTL > 1 first.
func decrementTTL(b []byte) {
	oldWord := binary.BigEndian.Uint16(b[offTTL:]) // TTL and protocol share one 16-bit word
	b[offTTL]--
	newWord := binary.BigEndian.Uint16(b[offTTL:])
	hc := binary.BigEndian.Uint16(b[offChecksum:])
	sum := uint32(^hc) + uint32(^oldWord) + uint32(newWord)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(b[offChecksum:], ^uint16(sum))
}

// icmpErrorAllowed reports whether a router may answer pkt with an ICMP
// error (RFC 1122 3.2.2, RFC 1812 4.3.2.7): never about an ICMP error, a
// fragment other than the first, or a packet from or to an address that
// does not name one host.
func icmpErrorAllowed(pkt []byte, h header) bool {
	if h.fragOff != 0 {
		return false
	}
	if h.proto == protoICMP {
		if h.tlen < h.hlen+1 {
			return false
		}
		switch pkt[h.hlen] { // ICMP type: only queries may be answered with errors
		case 0, 8, 13, 14, 15, 16, 17, 18: // echo reply/request, timestamp, info, address mask
		default:
			return false
		}
	}
	src := addrFrom(h.src)
	dst := addrFrom(h.dst)
	if !src.IsGlobalUnicast() { // refuses 0.0.0.0, loopback, link-local, multicast, broadcast
		return false
	}
	if dst.IsMulticast() || dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return false
	}
	return true
}

// appendICMPError appends to dst an IPv4 packet carrying an ICMP error of
// type typ and code about pkt, from src to pkt's source. It quotes pkt's
// header and the first 8 bytes of its payload (RFC 792). For "fragmentation
// needed" mtu is the next-hop MTU (RFC 1191); otherwise it must be 0.
func appendICMPError(dst, pkt []byte, h header, src netip.Addr, typ, code uint8, mtu uint16) []byte {
	quote := min(h.tlen, h.hlen+icmpQuoteLen)
	total := ipv4MinHeaderLen + icmpHeaderLen + quote
	start := len(dst)
	dst = append(dst, make([]byte, total)...)
	p := dst[start:]

	p[0] = 0x45
	binary.BigEndian.PutUint16(p[offTotalLen:], uint16(total))
	p[offTTL] = icmpErrorTTL
	p[offProto] = protoICMP
	s4 := src.As4()
	copy(p[offSrc:], s4[:])
	copy(p[offDst:], pkt[offSrc:offSrc+4])
	binary.BigEndian.PutUint16(p[offChecksum:], checksum(p[:ipv4MinHeaderLen], 0))

	icmp := p[ipv4MinHeaderLen:]
	icmp[0] = typ
	icmp[1] = code
	binary.BigEndian.PutUint16(icmp[6:], mtu)
	copy(icmp[icmpHeaderLen:], pkt[:quote])
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp, 0))
	return dst
}

func addrFrom(a uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)})
}

func addrUint32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}
