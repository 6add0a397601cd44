package udp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/weft-net/weft/internal/lease"
)

// fakeTUN is an in-memory tun.Device: the test plays the kernel, pushing
// packets the datapath reads (toDev) and taking what it writes (fromDev).
type fakeTUN struct {
	batch   int
	toDev   chan []byte
	fromDev chan []byte
	closed  chan struct{}
	once    sync.Once
}

var _ tun.Device = (*fakeTUN)(nil)

func newFakeTUN(batch int) *fakeTUN {
	return &fakeTUN{batch: batch, toDev: make(chan []byte, 1024), fromDev: make(chan []byte, 1024), closed: make(chan struct{})}
}

func (f *fakeTUN) File() *os.File { return nil }

func (f *fakeTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	var p []byte
	select {
	case <-f.closed:
		return 0, os.ErrClosed
	case p = <-f.toDev:
	}
	n := 0
	for {
		sizes[n] = copy(bufs[n][offset:], p)
		n++
		if n == len(bufs) {
			return n, nil
		}
		select {
		case p = <-f.toDev:
		default:
			return n, nil
		}
	}
}

func (f *fakeTUN) Write(bufs [][]byte, offset int) (int, error) {
	if offset < 10 {
		return 0, errors.New("no headroom for the virtio-net header")
	}
	for i, b := range bufs {
		select {
		case <-f.closed:
			return i, os.ErrClosed
		case f.fromDev <- bytes.Clone(b[offset:]):
		}
	}
	return len(bufs), nil
}

func (f *fakeTUN) MTU() (int, error)        { return 1472, nil }
func (f *fakeTUN) Name() (string, error)    { return "fake0", nil }
func (f *fakeTUN) Events() <-chan tun.Event { return nil }
func (f *fakeTUN) BatchSize() int           { return f.batch }
func (f *fakeTUN) Close() error {
	f.once.Do(func() { close(f.closed) })
	return nil
}

// datagram is one UDP payload and the other end's address.
type datagram struct {
	peer netip.AddrPort
	data []byte
}

// fakeBind is an in-memory conn.Bind: rx holds datagrams "from the
// network", sent what the datapath sent.
type fakeBind struct {
	batch  int
	rx     chan datagram
	sent   chan datagram
	port   atomic.Uint32
	closed chan struct{}
	once   sync.Once
	sends  atomic.Int64 // Send calls
}

var _ conn.Bind = (*fakeBind)(nil)

func newFakeBind(batch int) *fakeBind {
	return &fakeBind{batch: batch, rx: make(chan datagram, 1024), sent: make(chan datagram, 1024), closed: make(chan struct{})}
}

func (f *fakeBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	f.port.Store(uint32(port))
	recv := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		if len(bufs) != f.batch {
			return 0, errors.New("receive with a wrong number of buffers")
		}
		var d datagram
		select {
		case <-f.closed:
			return 0, net.ErrClosed
		case d = <-f.rx:
		}
		n := 0
		for {
			sizes[n] = copy(bufs[n], d.data)
			eps[n] = &conn.StdNetEndpoint{AddrPort: d.peer}
			n++
			if n == len(bufs) {
				return n, nil
			}
			select {
			case d = <-f.rx:
			default:
				return n, nil
			}
		}
	}
	return []conn.ReceiveFunc{recv}, port, nil
}

func (f *fakeBind) Close() error {
	f.once.Do(func() { close(f.closed) })
	return nil
}

func (f *fakeBind) SetMark(uint32) error { return nil }

func (f *fakeBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	f.sends.Add(1)
	if len(bufs) > f.batch {
		return errors.New("send batch larger than BatchSize")
	}
	for _, b := range bufs {
		f.sent <- datagram{peer: ep.(*conn.StdNetEndpoint).AddrPort, data: bytes.Clone(b)}
	}
	return nil
}

func (f *fakeBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	a, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return &conn.StdNetEndpoint{AddrPort: a}, nil
}

func (f *fakeBind) BatchSize() int { return f.batch }

// rig is one datapath over fakes, for node 10.244.1.0/24 with peers
// 10.244.2.0/24 at 192.0.2.2 and 10.244.3.0/24 at 192.0.2.3.
type rig struct {
	tun   *fakeTUN
	bind  *fakeBind
	dp    *datapath
	stats *counters
	table *atomic.Pointer[table]
}

const testMTU = 1472

var (
	peerA = netip.MustParseAddrPort("192.0.2.2:8285")
	peerB = netip.MustParseAddrPort("192.0.2.3:8285")
)

func newRig(t *testing.T, tunBatch, bindBatch int) *rig {
	t.Helper()
	r := &rig{tun: newFakeTUN(tunBatch), bind: newFakeBind(bindBatch), stats: &counters{}, table: &atomic.Pointer[table]{}}
	tb, skip := buildTable(netip.MustParsePrefix("10.244.1.0/24"), []lease.Lease{
		mkLease("10.244.1.0/24", "192.0.2.1", ""),
		mkLease("10.244.2.0/24", "192.0.2.2", ""),
		mkLease("10.244.3.0/24", "192.0.2.3", "udp"),
	}, 8285, stdEP)
	if len(skip) != 0 {
		t.Fatal(skip)
	}
	r.table.Store(tb)
	dp, err := startDatapath(datapathConfig{
		TUN: r.tun, Bind: r.bind, Port: 8285, MTU: testMTU, Table: r.table, Stats: r.stats,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	r.dp = dp
	t.Cleanup(func() { dp.Close() })
	return r
}

func recvOne[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func expectNone[T any](t *testing.T, ch <-chan T, what string) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("unexpected %s: %v", what, v)
	default:
	}
}

// waitStats polls until ok accepts the counters: the loops publish them
// after each batch.
func (r *rig) waitStats(t *testing.T, ok func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := r.stats.snapshot()
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("counters never matched: %+v", s)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestForwardToPeers(t *testing.T) {
	r := newRig(t, 16, 4)
	if got := r.bind.port.Load(); got != 8285 {
		t.Fatalf("bind opened on %d", got)
	}
	var want []datagram
	for i := range 10 {
		dst, peer := "10.244.2.9", peerA
		if i%3 == 0 {
			dst, peer = "10.244.3.9", peerB
		}
		p := pktSpec{src: "10.244.1.5", dst: dst, ttl: 64, payload: []byte{byte(i), 1, 2, 3}}.build()
		r.tun.toDev <- p
		exp := pktSpec{src: "10.244.1.5", dst: dst, ttl: 63, payload: []byte{byte(i), 1, 2, 3}}.build()
		want = append(want, datagram{peer: peer, data: exp})
	}
	got := map[netip.AddrPort][][]byte{}
	for range want {
		d := recvOne(t, r.bind.sent, "datagram")
		got[d.peer] = append(got[d.peer], d.data)
	}
	// Per peer, in order, TTL decremented, header checksum still valid.
	for _, peer := range []netip.AddrPort{peerA, peerB} {
		var exp [][]byte
		for _, w := range want {
			if w.peer == peer {
				exp = append(exp, w.data)
			}
		}
		if len(got[peer]) != len(exp) {
			t.Fatalf("%s got %d datagrams, want %d", peer, len(got[peer]), len(exp))
		}
		for i := range exp {
			if !bytes.Equal(got[peer][i], exp[i]) {
				t.Errorf("%s datagram %d = % x, want % x", peer, i, got[peer][i], exp[i])
			}
		}
	}
	s := r.waitStats(t, func(s Stats) bool { return s.TxPackets == 10 })
	if s.TxBytes != 10*24 {
		t.Errorf("TxBytes = %d", s.TxBytes)
	}
}

func TestUnknownDestinationGetsNetUnreachable(t *testing.T) {
	r := newRig(t, 1, 1)
	echo := []byte{8, 0, 0xf7, 0xff, 0, 0, 0, 0}
	p := pktSpec{src: "10.244.1.5", dst: "10.244.9.9", proto: protoICMP, payload: echo}.build()
	r.tun.toDev <- p
	icmp := recvOne(t, r.tun.fromDev, "ICMP error")
	h, res := parseIPv4(icmp)
	if res != parseOK || h.proto != protoICMP {
		t.Fatalf("reply does not parse as ICMP: %v %+v", res, h)
	}
	if addrFrom(h.dst).String() != "10.244.1.5" || addrFrom(h.src).String() != "10.244.9.9" {
		t.Fatalf("reply %s -> %s", addrFrom(h.src), addrFrom(h.dst))
	}
	if icmp[20] != icmpDestUnreach || icmp[21] != codeNetUnreach {
		t.Fatalf("ICMP type/code %d/%d", icmp[20], icmp[21])
	}
	if !bytes.Equal(icmp[28:], p[:28]) {
		t.Fatal("quote is not the offending header + 8 bytes")
	}
	// Our own subnet is not reachable through flannel0 either.
	r.tun.toDev <- pktSpec{src: "10.244.1.5", dst: "10.244.1.9"}.build()
	recvOne(t, r.tun.fromDev, "ICMP error for own subnet")
	s := r.waitStats(t, func(s Stats) bool { return s.NoRoute == 2 })
	if s.ICMPSent != 2 || s.TxPackets != 0 {
		t.Fatalf("stats %+v", s)
	}
	expectNone(t, r.bind.sent, "datagram")
}

func TestTooBigWithDF(t *testing.T) {
	r := newRig(t, 4, 4)
	payload := make([]byte, testMTU-20) // exactly the MTU
	r.tun.toDev <- pktSpec{src: "10.244.1.5", dst: "10.244.2.9", df: true, payload: payload}.build()
	if d := recvOne(t, r.bind.sent, "MTU-sized datagram"); len(d.data) != testMTU {
		t.Fatalf("sent %d bytes", len(d.data))
	}
	big := pktSpec{src: "10.244.1.5", dst: "10.244.2.9", df: true, payload: append(payload, 0)}.build()
	r.tun.toDev <- big
	icmp := recvOne(t, r.tun.fromDev, "fragmentation needed")
	if icmp[20] != icmpDestUnreach || icmp[21] != codeFragNeeded || binary.BigEndian.Uint16(icmp[26:]) != testMTU {
		t.Fatalf("ICMP % x", icmp[20:28])
	}
	// Without DF it goes out; the kernel fragments the datagram.
	r.tun.toDev <- pktSpec{src: "10.244.1.5", dst: "10.244.2.9", payload: append(payload, 0)}.build()
	if d := recvOne(t, r.bind.sent, "oversized datagram without DF"); len(d.data) != testMTU+1 {
		t.Fatalf("sent %d bytes", len(d.data))
	}
	r.waitStats(t, func(s Stats) bool { return s.TooBig == 1 && s.TxPackets == 2 && s.ICMPSent == 1 })
}

func TestTTLExpiry(t *testing.T) {
	r := newRig(t, 4, 4)
	r.tun.toDev <- pktSpec{src: "10.244.1.5", dst: "10.244.2.9", ttl: 1, payload: []byte("12345678")}.build()
	icmp := recvOne(t, r.tun.fromDev, "time exceeded")
	if icmp[20] != icmpTimeExceeded || icmp[21] != codeTTLExceeded {
		t.Fatalf("ICMP type/code %d/%d", icmp[20], icmp[21])
	}
	// From the far end of the tunnel, the peer's flannel0 address.
	if h, _ := parseIPv4(icmp); addrFrom(h.src).String() != "10.244.2.0" || addrFrom(h.dst).String() != "10.244.1.5" {
		t.Fatalf("time exceeded %s -> %s", addrFrom(h.src), addrFrom(h.dst))
	}
	r.waitStats(t, func(s Stats) bool { return s.TTLExpired == 1 })
	expectNone(t, r.bind.sent, "datagram")
}

func TestTUNJunkIsCounted(t *testing.T) {
	r := newRig(t, 4, 4)
	v6 := make([]byte, 48)
	v6[0] = 0x60
	r.tun.toDev <- v6
	r.tun.toDev <- []byte{0x45, 0, 0}
	r.tun.toDev <- pktSpec{src: "10.244.1.5", dst: "10.244.2.9"}.build()
	recvOne(t, r.bind.sent, "valid packet after junk")
	r.waitStats(t, func(s Stats) bool { return s.NotIPv4 == 1 && s.TUNMalformed == 1 && s.TxPackets == 1 })
}

func TestReceiveFromPeer(t *testing.T) {
	r := newRig(t, 4, 4)
	p := pktSpec{src: "10.244.2.5", dst: "10.244.1.7", ttl: 60, payload: []byte("hello pod")}.build()
	r.bind.rx <- datagram{peer: peerA, data: p}
	got := recvOne(t, r.tun.fromDev, "packet in flannel0")
	if !bytes.Equal(got, p) {
		t.Fatalf("wrote % x, want % x", got, p)
	}
	r.waitStats(t, func(s Stats) bool { return s.RxPackets == 1 && s.RxBytes == uint64(len(p)) })
}

func TestReceiveDropsAndCounts(t *testing.T) {
	r := newRig(t, 4, 4)
	valid := func(tag byte) []byte {
		return pktSpec{src: "10.244.2.5", dst: "10.244.1.7", payload: []byte{tag, 2, 3, 4}}.build()
	}
	trailing := append(valid(2), 0xee)
	badSum := valid(3)
	badSum[offChecksum] ^= 0xff
	ttl0 := pktSpec{src: "10.244.2.5", dst: "10.244.1.7", payload: []byte{4}}.build()
	ttl0[offTTL] = 0
	binary.BigEndian.PutUint16(ttl0[offChecksum:], 0)
	binary.BigEndian.PutUint16(ttl0[offChecksum:], checksum(ttl0[:20], 0))

	for _, d := range []datagram{
		{netip.MustParseAddrPort("198.51.100.7:8285"), valid(1)},       // no lease
		{netip.MustParseAddrPort("192.0.2.2:40000"), valid(1)},         // right host, wrong port
		{netip.MustParseAddrPort("192.0.2.1:8285"), valid(1)},          // our own lease
		{peerA, pktSpec{src: "10.244.3.5", dst: "10.244.1.7"}.build()}, // B's source from A
		{peerA, pktSpec{src: "10.244.1.9", dst: "10.244.1.7"}.build()}, // our own source from A
		{peerA, pktSpec{src: "10.244.2.5", dst: "10.244.3.7"}.build()}, // relaying through us
		{peerA, pktSpec{src: "10.244.2.5", dst: "8.8.8.8"}.build()},
		{peerA, valid(1)[:22]}, // truncated
		{peerA, valid(1)[:10]},
		{peerA, []byte{}},
		{peerA, trailing},
		{peerA, badSum},
		{peerA, ttl0},
		{peerA, bytes.Repeat([]byte{0xff}, 100)},
	} {
		r.bind.rx <- d
	}
	sentinel := valid(9)
	r.bind.rx <- datagram{peer: peerA, data: sentinel}
	if got := recvOne(t, r.tun.fromDev, "sentinel"); !bytes.Equal(got, sentinel) {
		t.Fatalf("first packet in flannel0 is % x, not the sentinel: a bad datagram got through", got)
	}
	s := r.waitStats(t, func(s Stats) bool { return s.RxPackets == 1 })
	want := Stats{RxPackets: 1, RxBytes: uint64(len(sentinel)), UnknownSender: 3, Spoofed: 2, WrongDest: 2, Malformed: 6}
	// The empty datagram has size 0 and is skipped like the kernel's empty slots.
	if s != want {
		t.Fatalf("stats\n got %+v\nwant %+v", s, want)
	}
}

func TestTableSwapTakesEffect(t *testing.T) {
	r := newRig(t, 4, 4)
	p := pktSpec{src: "10.244.1.5", dst: "10.244.2.9"}.build()
	r.tun.toDev <- p
	if d := recvOne(t, r.bind.sent, "datagram"); d.peer != peerA {
		t.Fatalf("sent to %s", d.peer)
	}
	// Peer A moves to a new address.
	tb, _ := buildTable(netip.MustParsePrefix("10.244.1.0/24"), []lease.Lease{mkLease("10.244.2.0/24", "192.0.2.22", "")}, 8285, stdEP)
	r.table.Store(tb)
	r.tun.toDev <- p
	if d := recvOne(t, r.bind.sent, "datagram"); d.peer.String() != "192.0.2.22:8285" {
		t.Fatalf("sent to %s after swap", d.peer)
	}
	// Its old address is no longer trusted.
	r.bind.rx <- datagram{peer: peerA, data: pktSpec{src: "10.244.2.5", dst: "10.244.1.7"}.build()}
	r.waitStats(t, func(s Stats) bool { return s.UnknownSender == 1 })
}

func TestCloseStopsLoops(t *testing.T) {
	r := newRig(t, 4, 4)
	done := make(chan error)
	go func() { done <- r.dp.Close() }()
	if err := recvOne(t, done, "Close"); err != nil {
		t.Fatal(err)
	}
	if !r.dp.tunStopped() {
		t.Fatal("TUN loop still running after Close")
	}
}

func TestTUNLossIsDetected(t *testing.T) {
	r := newRig(t, 4, 4)
	if r.dp.tunStopped() {
		t.Fatal("stopped at start")
	}
	// What the kernel does when flannel0 is deleted: reads fail with EBADFD,
	// which the tun package reports as os.ErrClosed.
	r.tun.Close()
	deadline := time.Now().Add(5 * time.Second)
	for !r.dp.tunStopped() {
		if time.Now().After(deadline) {
			t.Fatal("lost TUN not detected")
		}
		time.Sleep(time.Millisecond)
	}
}
