package udp

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// pktSpec describes an IPv4 packet for tests.
type pktSpec struct {
	src, dst string
	proto    uint8
	ttl      uint8
	df       bool
	fragOff  uint16
	options  int // bytes of IP options (multiple of 4)
	payload  []byte
}

// build renders the packet with a correct header checksum.
func (s pktSpec) build() []byte {
	hlen := ipv4MinHeaderLen + s.options
	b := make([]byte, hlen+len(s.payload))
	b[0] = 0x40 | byte(hlen/4)
	binary.BigEndian.PutUint16(b[offTotalLen:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:], 0x1234) // ID
	ff := s.fragOff
	if s.df {
		ff |= flagDF
	}
	binary.BigEndian.PutUint16(b[offFlagsFrag:], ff)
	ttl := s.ttl
	if ttl == 0 {
		ttl = 64
	}
	b[offTTL] = ttl
	proto := s.proto
	if proto == 0 {
		proto = 17
	}
	b[offProto] = proto
	src := netip.MustParseAddr(s.src).As4()
	dst := netip.MustParseAddr(s.dst).As4()
	copy(b[offSrc:], src[:])
	copy(b[offDst:], dst[:])
	for i := ipv4MinHeaderLen; i < hlen; i++ {
		b[i] = 1 // NOP options
	}
	binary.BigEndian.PutUint16(b[offChecksum:], checksum(b[:hlen], 0))
	copy(b[hlen:], s.payload)
	return b
}

func TestParseIPv4(t *testing.T) {
	good := pktSpec{src: "10.244.1.2", dst: "10.244.2.3", ttl: 63, df: true, payload: []byte("0123456789")}.build()
	withOpts := pktSpec{src: "10.244.1.2", dst: "10.244.2.3", options: 8, payload: []byte("xy")}.build()
	ipv6 := make([]byte, 40)
	ipv6[0] = 0x60

	h, r := parseIPv4(good)
	if r != parseOK {
		t.Fatalf("good packet: %v", r)
	}
	want := header{hlen: 20, tlen: 30, ttl: 63, proto: 17, df: true,
		src: addrUint32(netip.MustParseAddr("10.244.1.2")), dst: addrUint32(netip.MustParseAddr("10.244.2.3"))}
	if h != want {
		t.Fatalf("header = %+v, want %+v", h, want)
	}
	if h, r := parseIPv4(withOpts); r != parseOK || h.hlen != 28 || h.tlen != 30 {
		t.Fatalf("options: %+v %v", h, r)
	}
	// Trailing bytes past the total length are the caller's business.
	if h, r := parseIPv4(append(bytes.Clone(good), 0, 0, 0)); r != parseOK || h.tlen != len(good) {
		t.Fatalf("padded: %+v %v", h, r)
	}

	mod := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	for _, tc := range []struct {
		name string
		pkt  []byte
		want parseResult
	}{
		{"empty", nil, parseTooShort},
		{"truncated header", good[:19], parseTooShort},
		{"ipv6", ipv6, parseNotIPv4},
		{"short ipv6", ipv6[:8], parseNotIPv4},
		{"ihl 4", mod(func(b []byte) { b[0] = 0x44 }), parseBadHeaderLen},
		{"ihl beyond packet", mod(func(b []byte) { b[0] = 0x4f }), parseBadHeaderLen},
		{"truncated payload", good[:25], parseBadTotalLen},
		{"total below header", mod(func(b []byte) { binary.BigEndian.PutUint16(b[2:], 12) }), parseBadTotalLen},
		{"bad checksum", mod(func(b []byte) { b[offTTL]++ }), parseBadChecksum},
	} {
		if _, r := parseIPv4(tc.pkt); r != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, r, tc.want)
		}
	}
}

func TestDecrementTTLKeepsChecksumValid(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		b := make([]byte, 20)
		for j := range b {
			b[j] = byte(r.UintN(256))
		}
		b[0] = 0x45
		b[offTTL] = byte(2 + r.UintN(254))
		if i%7 == 0 {
			b[offTTL] = 2
		}
		binary.BigEndian.PutUint16(b[offChecksum:], 0)
		binary.BigEndian.PutUint16(b[offChecksum:], checksum(b, 0))
		ttl := b[offTTL]
		decrementTTL(b)
		if b[offTTL] != ttl-1 {
			t.Fatalf("TTL %d -> %d", ttl, b[offTTL])
		}
		if c := checksum(b, 0); c != 0 {
			t.Fatalf("header % x does not verify after decrement (residue %#x)", b, c)
		}
	}
}

func TestAppendICMPError(t *testing.T) {
	orig := pktSpec{src: "10.244.1.2", dst: "10.244.9.9", proto: 6, df: true, options: 4, payload: bytes.Repeat([]byte{0xab}, 100)}.build()
	h, _ := parseIPv4(orig)
	prefix := []byte("headroom")
	from := netip.MustParseAddr("10.244.9.9")
	out := appendICMPError(prefix, orig, h, from, icmpDestUnreach, codeFragNeeded, 1472)
	if !bytes.Equal(out[:len(prefix)], prefix) {
		t.Fatal("prefix overwritten")
	}
	p := out[len(prefix):]
	ih, r := parseIPv4(p)
	if r != parseOK || ih.tlen != len(p) {
		t.Fatalf("ICMP packet does not parse: %v %+v", r, ih)
	}
	if ih.proto != protoICMP || addrFrom(ih.src) != from || addrFrom(ih.dst) != netip.MustParseAddr("10.244.1.2") {
		t.Fatalf("ICMP header %+v", ih)
	}
	icmp := p[ih.hlen:]
	if checksum(icmp, 0) != 0 {
		t.Fatal("ICMP checksum does not verify")
	}
	if icmp[0] != icmpDestUnreach || icmp[1] != codeFragNeeded || binary.BigEndian.Uint16(icmp[6:]) != 1472 {
		t.Fatalf("ICMP header % x", icmp[:8])
	}
	if quote := icmp[8:]; !bytes.Equal(quote, orig[:h.hlen+8]) {
		t.Fatalf("quote = % x, want header + 8 bytes % x", quote, orig[:h.hlen+8])
	}

	// A packet with less than 8 bytes of payload is quoted whole.
	short := pktSpec{src: "10.244.1.2", dst: "10.244.9.9", payload: []byte{1, 2, 3}}.build()
	sh, _ := parseIPv4(short)
	p = appendICMPError(nil, short, sh, from, icmpTimeExceeded, codeTTLExceeded, 0)
	if !bytes.Equal(p[28:], short) {
		t.Fatalf("short quote = % x", p[28:])
	}
}

func TestICMPErrorAllowed(t *testing.T) {
	echo := []byte{8, 0, 0, 0, 0, 0, 0, 0}
	unreach := []byte{3, 1, 0, 0, 0, 0, 0, 0}
	for _, tc := range []struct {
		name string
		spec pktSpec
		want bool
	}{
		{"udp", pktSpec{src: "10.244.1.2", dst: "10.244.9.9"}, true},
		{"echo request", pktSpec{src: "10.244.1.2", dst: "10.244.9.9", proto: 1, payload: echo}, true},
		{"icmp error", pktSpec{src: "10.244.1.2", dst: "10.244.9.9", proto: 1, payload: unreach}, false},
		{"icmp without header", pktSpec{src: "10.244.1.2", dst: "10.244.9.9", proto: 1}, false},
		{"later fragment", pktSpec{src: "10.244.1.2", dst: "10.244.9.9", fragOff: 185}, false},
		{"from 0.0.0.0", pktSpec{src: "0.0.0.0", dst: "10.244.9.9"}, false},
		{"from loopback", pktSpec{src: "127.0.0.1", dst: "10.244.9.9"}, false},
		{"to multicast", pktSpec{src: "10.244.1.2", dst: "239.1.1.1"}, false},
		{"to broadcast", pktSpec{src: "10.244.1.2", dst: "255.255.255.255"}, false},
	} {
		b := tc.spec.build()
		h, r := parseIPv4(b)
		if r != parseOK {
			t.Fatalf("%s: %v", tc.name, r)
		}
		if got := icmpErrorAllowed(b, h); got != tc.want {
			t.Errorf("%s: allowed = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestTokenBucket(t *testing.T) {
	b := tokenBucket{rate: 10, burst: 3, tokens: 3}
	now := time.Unix(1000, 0)
	n := 0
	for range 10 {
		if b.allow(now) {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("burst allowed %d, want 3", n)
	}
	if !b.allow(now.Add(110 * time.Millisecond)) { // 110 ms refills one token at 10/s
		t.Fatal("no token after refill")
	}
}

// FuzzParseIPv4 feeds arbitrary bytes to the parser and, where it accepts
// them, to the TTL and ICMP code, checking what they promise.
func FuzzParseIPv4(f *testing.F) {
	f.Add(pktSpec{src: "10.244.1.2", dst: "10.244.2.3", payload: []byte("hello")}.build())
	f.Add(pktSpec{src: "10.244.1.2", dst: "10.244.2.3", proto: 1, options: 12, payload: []byte{8, 0, 1, 2, 3, 4, 5, 6, 7}}.build())
	f.Add([]byte{0x45, 0, 0, 20})
	f.Add([]byte{0x60, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := bytes.Clone(b)
		h, r := parseIPv4(b)
		if !bytes.Equal(b, orig) {
			t.Fatal("parse modified its input")
		}
		if r != parseOK {
			return
		}
		if h.hlen < 20 || h.hlen > 60 || h.tlen < h.hlen || h.tlen > len(b) {
			t.Fatalf("accepted header out of bounds: %+v for %d bytes", h, len(b))
		}
		if checksum(b[:h.hlen], 0) != 0 {
			t.Fatal("accepted a header whose checksum does not verify")
		}
		if icmpErrorAllowed(b, h) {
			from := netip.MustParseAddr("10.0.0.1")
			p := appendICMPError(nil, b, h, from, icmpDestUnreach, codeNetUnreach, 0)
			ih, ir := parseIPv4(p)
			if ir != parseOK || ih.tlen != len(p) || len(p) > maxICMPErrorBytes {
				t.Fatalf("ICMP error %v, %+v, %d bytes", ir, ih, len(p))
			}
			if checksum(p[ih.hlen:], 0) != 0 {
				t.Fatal("ICMP checksum does not verify")
			}
			if icmpErrorAllowed(p, ih) {
				t.Fatal("an ICMP error may be answered with another")
			}
		}
		if h.ttl > 1 {
			decrementTTL(b)
			if h2, r2 := parseIPv4(b); r2 != parseOK || h2.ttl != h.ttl-1 {
				t.Fatalf("after TTL decrement: %v %+v", r2, h2)
			}
		}
	})
}
