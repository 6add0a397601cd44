package udp

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

const (
	// tunOffset is the headroom left before each packet in a buffer: the
	// TUN writes its virtio-net header there (10 bytes) when offloads are on.
	tunOffset = 16
	// bufSize holds the largest datagram a GRO read returns, or the
	// largest packet a GRO write to the TUN builds, after the headroom.
	bufSize = tunOffset + 65535

	icmpRate  = 200 // ICMP errors per second, as a router would rate-limit them
	icmpBurst = 50
)

// Stats counts what the datapath did since the backend was created. Every
// packet read from flannel0 or the socket ends in exactly one counter.
type Stats struct {
	TxPackets uint64 // inner packets sent to peers
	TxBytes   uint64
	RxPackets uint64 // inner packets from peers written to flannel0
	RxBytes   uint64

	NoRoute       uint64 // from flannel0, destination in no lease: ICMP net unreachable
	TooBig        uint64 // from flannel0, larger than the MTU with DF: ICMP fragmentation needed
	TTLExpired    uint64 // from flannel0, TTL ran out: ICMP time exceeded
	NotIPv4       uint64 // from flannel0, not IPv4 (e.g. IPv6 router solicitations)
	TUNMalformed  uint64 // from flannel0, not a valid IPv4 packet
	SendErrors    uint64 // packets the socket refused
	UnknownSender uint64 // datagrams from an address:port that holds no lease
	Spoofed       uint64 // datagrams whose inner source is outside the sender's lease
	WrongDest     uint64 // datagrams whose inner destination is outside this node's subnet
	Malformed     uint64 // datagrams that are not exactly one valid IPv4 packet
	WriteErrors   uint64 // failed writes of received packets to flannel0
	ReadErrors    uint64 // failed reads from flannel0 or the socket

	ICMPSent uint64 // ICMP errors written back into flannel0

	Restarts uint64 // times flannel0 was re-created after it vanished
}

// counters is the live, shared form of Stats.
type counters struct {
	txPackets, txBytes, rxPackets, rxBytes                   atomic.Uint64
	noRoute, tooBig, ttlExpired, notIPv4, tunMalformed       atomic.Uint64
	sendErrors, unknownSender, spoofed, wrongDest, malformed atomic.Uint64
	writeErrors, readErrors, icmpSent, restarts              atomic.Uint64
}

func (c *counters) snapshot() Stats {
	return Stats{
		TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(),
		RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(),
		NoRoute: c.noRoute.Load(), TooBig: c.tooBig.Load(), TTLExpired: c.ttlExpired.Load(),
		NotIPv4: c.notIPv4.Load(), TUNMalformed: c.tunMalformed.Load(), SendErrors: c.sendErrors.Load(),
		UnknownSender: c.unknownSender.Load(), Spoofed: c.spoofed.Load(), WrongDest: c.wrongDest.Load(),
		Malformed: c.malformed.Load(), WriteErrors: c.writeErrors.Load(), ReadErrors: c.readErrors.Load(),
		ICMPSent: c.icmpSent.Load(), Restarts: c.restarts.Load(),
	}
}

// add adds a batch's local counts; the loops count in plain fields and
// publish once per batch so that the hot path touches no shared cache line
// per packet.
func (c *counters) add(s *Stats) {
	add := func(a *atomic.Uint64, v uint64) {
		if v != 0 {
			a.Add(v)
		}
	}
	add(&c.txPackets, s.TxPackets)
	add(&c.txBytes, s.TxBytes)
	add(&c.rxPackets, s.RxPackets)
	add(&c.rxBytes, s.RxBytes)
	add(&c.noRoute, s.NoRoute)
	add(&c.tooBig, s.TooBig)
	add(&c.ttlExpired, s.TTLExpired)
	add(&c.notIPv4, s.NotIPv4)
	add(&c.tunMalformed, s.TUNMalformed)
	add(&c.sendErrors, s.SendErrors)
	add(&c.unknownSender, s.UnknownSender)
	add(&c.spoofed, s.Spoofed)
	add(&c.wrongDest, s.WrongDest)
	add(&c.malformed, s.Malformed)
	add(&c.writeErrors, s.WriteErrors)
	add(&c.readErrors, s.ReadErrors)
	add(&c.icmpSent, s.ICMPSent)
	*s = Stats{}
}

// datapathConfig is what the two forwarding loops run on.
type datapathConfig struct {
	TUN  tun.Device
	Bind conn.Bind // not yet open
	Port uint16
	// MTU of flannel0: a packet longer than this with DF set is answered
	// with "fragmentation needed" instead of being sent.
	MTU   int
	Table *atomic.Pointer[table]
	Stats *counters
	Log   *slog.Logger
}

// datapath forwards between one TUN device and one UDP socket:
// flannel0 -> peer by destination subnet, and peer -> flannel0 after
// checking who sent it.
type datapath struct {
	cfg     datapathConfig
	tunDone chan struct{} // closed when the flannel0 reader stops
	wg      sync.WaitGroup
	once    sync.Once
	icmp    tokenBucket
}

// startDatapath opens the bind on cfg.Port and starts the loops.
func startDatapath(cfg datapathConfig) (*datapath, error) {
	fns, _, err := cfg.Bind.Open(cfg.Port)
	if err != nil {
		return nil, err
	}
	d := &datapath{
		cfg:     cfg,
		tunDone: make(chan struct{}),
		icmp:    tokenBucket{rate: icmpRate, burst: icmpBurst, tokens: icmpBurst},
	}
	d.wg.Add(1 + len(fns))
	go func() {
		defer d.wg.Done()
		defer close(d.tunDone)
		d.tunToUDP()
	}()
	for _, fn := range fns {
		go func() {
			defer d.wg.Done()
			d.udpToTUN(fn)
		}()
	}
	if ev := cfg.TUN.Events(); ev != nil {
		// The device's event channel must be drained or its listener blocks.
		go func() {
			for range ev {
			}
		}()
	}
	return d, nil
}

// Close stops both loops and closes the device file and the socket.
func (d *datapath) Close() error {
	var err error
	d.once.Do(func() {
		err = errors.Join(d.cfg.TUN.Close(), d.cfg.Bind.Close())
		d.wg.Wait()
	})
	return err
}

// tunStopped reports whether the flannel0 reader has stopped, which happens
// when the device was deleted under us (the kernel detaches our file).
func (d *datapath) tunStopped() bool {
	select {
	case <-d.tunDone:
		return true
	default:
		return false
	}
}

func isClosed(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed)
}

// sendGroup is the part of one TUN batch that goes to one peer.
type sendGroup struct {
	p    *peer
	bufs [][]byte
}

func (d *datapath) tunToUDP() {
	batch := max(d.cfg.TUN.BatchSize(), 1)
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, bufSize)
	}
	sizes := make([]int, batch)
	icmpBuf := make([]byte, 0, tunOffset+maxICMPErrorBytes)
	var groups []sendGroup
	var local Stats
	errRun := 0
	for {
		n, err := d.cfg.TUN.Read(bufs, sizes, tunOffset)
		if n > 0 {
			groups = d.routeBatch(bufs[:n], sizes[:n], groups[:0], &icmpBuf, &local)
			for _, g := range groups {
				d.send(g, &local)
			}
			d.cfg.Stats.add(&local)
		}
		if err != nil {
			if isClosed(err) {
				return
			}
			d.cfg.Stats.readErrors.Add(1)
			if !errors.Is(err, tun.ErrTooManySegments) {
				errRun++
				d.cfg.Log.Debug("read from TUN", "err", err)
				backoff(errRun)
			}
			continue
		}
		errRun = 0
	}
}

// routeBatch validates, routes and TTL-decrements the packets of one TUN
// read, answers those it cannot forward with ICMP, and groups the rest by
// peer, keeping their order.
func (d *datapath) routeBatch(bufs [][]byte, sizes []int, groups []sendGroup, icmpBuf *[]byte, st *Stats) []sendGroup {
	t := d.cfg.Table.Load()
	for i, b := range bufs {
		pkt := b[tunOffset : tunOffset+sizes[i]]
		h, r := parseIPv4(pkt)
		switch {
		case r == parseNotIPv4:
			st.NotIPv4++
			continue
		case r != parseOK:
			st.TUNMalformed++
			continue
		}
		p := t.lookup(h.dst)
		switch {
		case p == nil:
			st.NoRoute++
			d.sendICMP(pkt, h, addrFrom(h.dst), icmpDestUnreach, codeNetUnreach, 0, icmpBuf, st)
			continue
		case h.tlen > d.cfg.MTU && h.df:
			st.TooBig++
			d.sendICMP(pkt, h, p.subnet.Addr(), icmpDestUnreach, codeFragNeeded, uint16(d.cfg.MTU), icmpBuf, st)
			continue
		case h.ttl <= 1:
			st.TTLExpired++
			d.sendICMP(pkt, h, p.subnet.Addr(), icmpTimeExceeded, codeTTLExceeded, 0, icmpBuf, st)
			continue
		}
		decrementTTL(pkt)
		// Keep the capacity after the packet: the Bind appends the next
		// same-sized packets to it to send them as one UDP GSO message.
		out := b[tunOffset : tunOffset+h.tlen]
		j := 0
		for j < len(groups) && groups[j].p != p {
			j++
		}
		if j == len(groups) {
			if j < cap(groups) {
				groups = groups[:j+1]
				groups[j].p = p
				groups[j].bufs = groups[j].bufs[:0]
			} else {
				groups = append(groups, sendGroup{p: p})
			}
		}
		groups[j].bufs = append(groups[j].bufs, out)
	}
	return groups
}

func (d *datapath) send(g sendGroup, st *Stats) {
	limit := d.cfg.Bind.BatchSize()
	for bufs := g.bufs; len(bufs) > 0; {
		chunk := bufs[:min(len(bufs), limit)]
		bufs = bufs[len(chunk):]
		err := d.cfg.Bind.Send(chunk, g.p.ep)
		var gsoOff conn.ErrUDPGSODisabled
		if errors.As(err, &gsoOff) {
			d.cfg.Log.Warn("UDP segmentation offload turned off", "err", err)
			err = gsoOff.RetryErr
		}
		if err != nil {
			st.SendErrors += uint64(len(chunk))
			if !isClosed(err) {
				d.cfg.Log.Debug("send to peer", "peer", g.p.endpoint, "subnet", g.p.subnet, "err", err)
			}
			continue
		}
		st.TxPackets += uint64(len(chunk))
		for _, b := range chunk {
			st.TxBytes += uint64(len(b))
		}
	}
}

// sendICMP writes an ICMP error about pkt from src back into flannel0.
// src cannot be flannel0's own address, which flannel uses: the kernel
// drops a packet arriving with a local source as a martian. The callers
// pass the far end of the tunnel, the peer's flannel0 address, or for a
// destination no lease holds, that destination: both route back through
// flannel0, so reverse-path filtering accepts them too.
func (d *datapath) sendICMP(pkt []byte, h header, src netip.Addr, typ, code uint8, mtu uint16, buf *[]byte, st *Stats) {
	if !icmpErrorAllowed(pkt, h) || !d.icmp.allow(time.Now()) {
		return
	}
	b := appendICMPError((*buf)[:tunOffset], pkt, h, src, typ, code, mtu)
	*buf = b
	if _, err := d.cfg.TUN.Write([][]byte{b}, tunOffset); err != nil {
		st.WriteErrors++
		return
	}
	st.ICMPSent++
}

func (d *datapath) udpToTUN(recv conn.ReceiveFunc) {
	batch := d.cfg.Bind.BatchSize()
	bufs := make([][]byte, batch)
	pkts := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, bufSize)
		pkts[i] = bufs[i][tunOffset:]
	}
	sizes := make([]int, batch)
	eps := make([]conn.Endpoint, batch)
	out := make([][]byte, 0, batch)
	var local Stats
	errRun := 0
	for {
		n, err := recv(pkts, sizes, eps)
		if err != nil {
			if isClosed(err) {
				return
			}
			d.cfg.Stats.readErrors.Add(1)
			errRun++
			d.cfg.Log.Debug("receive from socket", "err", err)
			backoff(errRun)
			continue
		}
		errRun = 0
		out = d.admitBatch(bufs[:n], sizes[:n], eps[:n], out[:0], &local)
		if len(out) > 0 {
			if _, err := d.cfg.TUN.Write(out, tunOffset); err != nil {
				local.WriteErrors++
				if !isClosed(err) {
					d.cfg.Log.Debug("write to TUN", "err", err)
				}
			}
		}
		d.cfg.Stats.add(&local)
	}
}

// admitBatch checks each received datagram: from a current lease's
// address and port, exactly one valid IPv4 packet, its source inside that
// lease's subnet and its destination inside ours. It returns the admitted
// packets as buffers with tunOffset bytes of headroom.
func (d *datapath) admitBatch(bufs [][]byte, sizes []int, eps []conn.Endpoint, out [][]byte, st *Stats) [][]byte {
	t := d.cfg.Table.Load()
	for i, b := range bufs {
		if sizes[i] == 0 {
			continue
		}
		from := addrPortOf(eps[i])
		if !t.isSender(from) {
			st.UnknownSender++
			continue
		}
		pkt := b[tunOffset : tunOffset+sizes[i]]
		h, r := parseIPv4(pkt)
		// A datagram carries exactly one packet: trailing bytes mean the
		// sender does not speak this format.
		if r != parseOK || h.tlen != len(pkt) || h.ttl == 0 {
			st.Malformed++
			continue
		}
		if p := t.lookup(h.src); p == nil || p.endpoint != from {
			st.Spoofed++
			continue
		}
		if !t.ownHas(h.dst) {
			st.WrongDest++
			continue
		}
		out = append(out, b[:tunOffset+h.tlen])
		st.RxPackets++
		st.RxBytes += uint64(h.tlen)
	}
	return out
}

// addrPortOf is the sender of a received datagram.
func addrPortOf(ep conn.Endpoint) netip.AddrPort {
	if ep == nil {
		return netip.AddrPort{}
	}
	if se, ok := ep.(*conn.StdNetEndpoint); ok {
		return netip.AddrPortFrom(se.Addr().Unmap(), se.Port())
	}
	ap, err := netip.ParseAddrPort(ep.DstToString())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// backoff slows a loop that keeps failing, so that a persistent error
// does not spin a core.
func backoff(run int) {
	if run > 3 {
		time.Sleep(min(time.Duration(run)*time.Millisecond, 100*time.Millisecond))
	}
}

// tokenBucket limits ICMP errors; used by one goroutine only.
type tokenBucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func (b *tokenBucket) allow(now time.Time) bool {
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
