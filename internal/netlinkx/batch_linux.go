package netlinkx

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// A Batch collects route, neighbour and FDB changes and sends them to the
// kernel many to a write: rtnetlink handles every message of one sendmsg
// in turn (netlink_rcv_skb), each with NLM_F_ACK and a sequence number of
// its own, and carries on past a failed one, so a batch costs a few system
// calls per hundred changes instead of two or three per change, with the
// same per-change answers. Programming 5,000 leases is 15,000 changes.
//
// Each method queues what the Handle method of the same name does, with
// the same message; Flush sends them, in order. A Batch is not safe for
// concurrent use; several may flush on one Handle at once.
type Batch struct {
	h   *Handle
	buf []byte    // the queued messages, back to back
	ops []batchOp // one per message, in order
	// What the ops change, for their errors, by batchOp.idx.
	routes []Route
	neighs []Neigh
	fdbs   []FDB
}

type batchOp struct {
	end    int // offset in buf just past the op's message
	idx    int // into the Batch's slice of the kind
	kind   opKind
	delete bool // a delete: the entry being gone already is success
}

type opKind uint8

const (
	opRoute opKind = iota
	opNeigh
	opFDB
)

func (b *Batch) describe(op batchOp) string {
	verb := "replace"
	if op.delete {
		verb = "delete"
	}
	switch op.kind {
	case opRoute:
		return fmt.Sprintf("%s route %s", verb, b.routes[op.idx])
	case opNeigh:
		return fmt.Sprintf("%s neighbour %s", verb, b.neighs[op.idx])
	default:
		return fmt.Sprintf("%s fdb entry %s", verb, b.fdbs[op.idx])
	}
}

// NewBatch returns an empty batch on h's namespace.
func (h *Handle) NewBatch() *Batch { return &Batch{h: h} }

// Len is the number of changes queued.
func (b *Batch) Len() int { return len(b.ops) }

// RouteReplace queues `ip route replace` of r (see Handle.RouteReplace).
func (b *Batch) RouteReplace(r Route) {
	b.queueRoute(r, unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, nl.NewRtMsg(), false)
}

// RouteDel queues `ip route del` of exactly r (see Handle.RouteDel).
func (b *Batch) RouteDel(r Route) {
	b.queueRoute(r, unix.RTM_DELROUTE, 0, nl.NewRtDelMsg(), true)
}

// NeighSet queues `ip neigh replace` of n (see Handle.NeighSet).
func (b *Batch) NeighSet(n Neigh) {
	b.neighs = append(b.neighs, n)
	b.queueNeigh(batchOp{kind: opNeigh, idx: len(b.neighs) - 1}, unix.RTM_NEWNEIGH, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, ipNeigh(n, true))
}

// NeighDel queues `ip neigh del` of n (see Handle.NeighDel).
func (b *Batch) NeighDel(n Neigh) {
	b.neighs = append(b.neighs, n)
	b.queueNeigh(batchOp{kind: opNeigh, idx: len(b.neighs) - 1, delete: true}, unix.RTM_DELNEIGH, 0, ipNeigh(n, false))
}

// FDBSet queues `bridge fdb replace` of e (see Handle.FDBSet).
func (b *Batch) FDBSet(e FDB) {
	b.fdbs = append(b.fdbs, e)
	b.queueNeigh(batchOp{kind: opFDB, idx: len(b.fdbs) - 1}, unix.RTM_NEWNEIGH, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, fdbNeigh(e, true))
}

// FDBDel queues `bridge fdb del` of e (see Handle.FDBDel).
func (b *Batch) FDBDel(e FDB) {
	b.fdbs = append(b.fdbs, e)
	b.queueNeigh(batchOp{kind: opFDB, idx: len(b.fdbs) - 1, delete: true}, unix.RTM_DELNEIGH, 0, fdbNeigh(e, false))
}

// queueRoute builds the message the library's RouteReplace and RouteDel
// send for the fields Route has (netlink's prepareRouteReq).
func (b *Batch) queueRoute(r Route, typ, flags int, msg *nl.RtMsg, del bool) {
	nr := toNLRoute(r)
	req := nl.NewNetlinkRequest(typ, flags|unix.NLM_F_ACK)
	fam, dst := unix.AF_INET, nr.Dst.IP.To4()
	if dst == nil {
		fam, dst = unix.AF_INET6, nr.Dst.IP.To16()
	}
	ones, _ := nr.Dst.Mask.Size()
	msg.Family, msg.Dst_len = uint8(fam), uint8(ones)
	attrs := []*nl.RtAttr{nl.NewRtAttr(unix.RTA_DST, dst)}
	if r.Gw.IsValid() {
		attrs = append(attrs, nl.NewRtAttr(unix.RTA_GATEWAY, r.Gw.AsSlice()))
	}
	if nr.Table > 0 {
		if nr.Table >= 256 {
			msg.Table = unix.RT_TABLE_UNSPEC
			attrs = append(attrs, nl.NewRtAttr(unix.RTA_TABLE, nl.Uint32Attr(uint32(nr.Table))))
		} else {
			msg.Table = uint8(nr.Table)
		}
	}
	if nr.Priority > 0 {
		attrs = append(attrs, nl.NewRtAttr(unix.RTA_PRIORITY, nl.Uint32Attr(uint32(nr.Priority))))
	}
	msg.Flags = uint32(nr.Flags)
	msg.Scope = uint8(nr.Scope)
	req.AddData(msg)
	for _, a := range attrs {
		req.AddData(a)
	}
	req.AddData(nl.NewRtAttr(unix.RTA_OIF, nl.Uint32Attr(uint32(nr.LinkIndex))))
	b.routes = append(b.routes, r)
	b.push(req, batchOp{kind: opRoute, idx: len(b.routes) - 1, delete: del})
}

// ipNeigh is n as NeighSet (set) or NeighDel sends it.
func ipNeigh(n Neigh, set bool) *netlink.Neigh {
	nn := &netlink.Neigh{LinkIndex: n.LinkIndex, Family: neighFamily(n.IP), IP: n.IP.AsSlice()}
	if set {
		nn.State = n.State
		if nn.State == 0 {
			nn.State = NUDPermanent
		}
		nn.Type = unix.RTN_UNICAST
		nn.HardwareAddr = n.MAC.HardwareAddr()
	}
	return nn
}

// fdbNeigh is e as FDBSet (set) or FDBDel sends it.
func fdbNeigh(e FDB, set bool) *netlink.Neigh {
	nn := &netlink.Neigh{LinkIndex: e.LinkIndex, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		IP: e.Dst.AsSlice(), HardwareAddr: e.MAC.HardwareAddr()}
	if set {
		nn.State = netlink.NUD_PERMANENT
	}
	return nn
}

// queueNeigh builds the message of the library's neighHandle for the
// fields weft sets.
func (b *Batch) queueNeigh(op batchOp, typ, flags int, n *netlink.Neigh) {
	req := nl.NewNetlinkRequest(typ, flags|unix.NLM_F_ACK)
	req.AddData(&netlink.Ndmsg{Family: uint8(n.Family), Index: uint32(n.LinkIndex), State: uint16(n.State),
		Type: uint8(n.Type), Flags: uint8(n.Flags)})
	req.AddData(nl.NewRtAttr(netlink.NDA_DST, n.IP))
	if n.HardwareAddr != nil {
		req.AddData(nl.NewRtAttr(netlink.NDA_LLADDR, n.HardwareAddr))
	}
	b.push(req, op)
}

func (b *Batch) push(req *nl.NetlinkRequest, op batchOp) {
	b.buf = append(b.buf, req.Serialize()...)
	op.end = len(b.buf)
	b.ops = append(b.ops, op)
}

// Flush sends the queued changes in order and returns one error per
// change, in the order queued: nil for each the kernel made (or, for a
// delete, found already gone), else what it answered, wrapped as the
// Handle method would wrap it. The batch is empty afterwards.
func (b *Batch) Flush() []error {
	errs := make([]error, len(b.ops))
	if len(b.ops) > 0 {
		b.h.flush(b.buf, b.ops, errs)
	}
	for i, err := range errs {
		switch op := b.ops[i]; {
		case err == nil:
		case op.delete && IsNotFound(err):
			errs[i] = nil
		default:
			errs[i] = fmt.Errorf("%s: %w", b.describe(op), err)
		}
	}
	b.buf, b.ops = b.buf[:0], b.ops[:0]
	b.routes, b.neighs, b.fdbs = b.routes[:0], b.neighs[:0], b.fdbs[:0]
	return errs
}

// Bounds on one write of a batch. The kernel answers every message before
// the write returns, so all the acknowledgements of a chunk must fit in
// the socket's receive buffer at once, or the overflow is dropped
// (ENOBUFS). ackCost is what one costs there, with room to spare: the
// kernel charges each queued message's full buffer (about 768 bytes for
// a 36-byte ACK).
const (
	batchChunkBytes = 32 << 10
	ackCost         = 1024
	batchRcvBuf     = 1 << 20 // asked for; the kernel may give less
)

// batchSocket is the socket batches are written to: one of the Handle's
// own, opened in its namespace, besides the library's (whose socket is
// not reachable from outside it).
type batchSocket struct {
	s       *nl.NetlinkSocket
	seq     uint32
	maxAcks int    // messages per write whose ACKs fit in the receive buffer
	rbuf    []byte // for reading the answers
}

func openBatchSocket(ns netns.NsHandle) (*batchSocket, error) {
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink batch socket: %w", err)
	}
	fd := s.GetFd()
	// A larger receive buffer lets one write carry more changes. Forcing
	// it past rmem_max needs CAP_NET_ADMIN, which weftd has; without it,
	// the ordinary limit applies.
	if s.SetReceiveBufferSize(batchRcvBuf, true) != nil {
		_ = s.SetReceiveBufferSize(batchRcvBuf, false)
	}
	// Errors without the failed request copied back (it is known by its
	// sequence number), and with the kernel's reason in words.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	_ = s.SetExtAck(true)
	rcv, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("netlink batch socket: receive buffer: %w", err)
	}
	return &batchSocket{s: s, maxAcks: max(rcv/ackCost, 1), rbuf: make([]byte, 64<<10)}, nil
}

// flush writes msgs (the messages of ops, back to back) in chunks and
// sets errs[i] to the kernel's answer to op i.
func (h *Handle) flush(msgs []byte, ops []batchOp, errs []error) {
	h.bmu.Lock()
	defer h.bmu.Unlock()
	bs := h.bs
	start := 0 // offset of ops[first]'s message
	for first := 0; first < len(ops); {
		last := first // ops[first:last+1] go in this write
		for last+1 < len(ops) && last+1-first < bs.maxAcks && ops[last+1].end-start <= batchChunkBytes {
			last++
		}
		chunk := ops[first : last+1]
		base := bs.seq + 1
		bs.seq += uint32(len(chunk))
		off := start
		for i := range chunk {
			// The header's sequence number, in place: seq is at offset 8.
			nl.NativeEndian().PutUint32(msgs[off+8:off+12], base+uint32(i))
			off = chunk[i].end
		}
		bs.exchange(msgs[start:chunk[len(chunk)-1].end], base, errs[first:last+1])
		start = chunk[len(chunk)-1].end
		first = last + 1
	}
}

// errNoAnswer is the answer to a change whose acknowledgement never came
// (dropped by a full receive buffer): it may or may not have been made.
var errNoAnswer = errors.New("no answer from the kernel (acknowledgement lost)")

// exchange writes one chunk whose messages carry sequence numbers base,
// base+1, … and reads back the answer to each into errs.
func (bs *batchSocket) exchange(chunk []byte, base uint32, errs []error) {
	fd := bs.s.GetFd()
	answered := make([]bool, len(errs))
	if err := unix.Sendto(fd, chunk, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		for i := range errs {
			errs[i] = fmt.Errorf("netlink write: %w", err)
		}
		return
	}
	// rtnetlink answers each message before sendmsg returns, so every
	// acknowledgement there will be is queued now: read without waiting
	// until the queue is empty. (The library's Receive waits for more.)
	pending := len(errs)
	for pending > 0 {
		n, _, err := unix.Recvfrom(fd, bs.rbuf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.ENOBUFS) {
			// Some acknowledgements were dropped; the rest are queued.
			bs.maxAcks = max(bs.maxAcks/2, 1)
			continue
		}
		if err != nil {
			break // EAGAIN: nothing more will come
		}
		msgs, err := syscall.ParseNetlinkMessage(bs.rbuf[:n])
		if err != nil {
			break
		}
		for _, m := range msgs {
			i := int(m.Header.Seq - base)
			if m.Header.Type != unix.NLMSG_ERROR || m.Header.Seq-base >= uint32(len(errs)) || answered[i] {
				continue // not an answer to this chunk
			}
			answered[i] = true
			pending--
			errs[i] = ackError(m)
		}
	}
	for i := range errs {
		if !answered[i] {
			errs[i] = errNoAnswer
		}
	}
}

// ackError decodes an NLMSG_ERROR: nil for an ACK, else the errno with
// the kernel's extended message, if it gave one.
func ackError(m syscall.NetlinkMessage) error {
	if len(m.Data) < 4 {
		return errors.New("short netlink error message")
	}
	errno := int32(nl.NativeEndian().Uint32(m.Data[:4]))
	if errno == 0 {
		return nil
	}
	err := error(syscall.Errno(-errno))
	if m.Header.Flags&unix.NLM_F_ACK_TLVS == 0 {
		return err
	}
	// struct nlmsgerr: the errno, the request's header and, unless
	// capped, the rest of the request; then the attributes.
	off := 4 + unix.SizeofNlMsghdr
	if m.Header.Flags&unix.NLM_F_CAPPED == 0 && len(m.Data) >= off {
		reqLen := int(nl.NativeEndian().Uint32(m.Data[4:8]))
		off = 4 + (reqLen+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)
	}
	if off > len(m.Data) {
		return err
	}
	attrs, perr := nl.ParseRouteAttr(m.Data[off:])
	if perr != nil {
		return err
	}
	for _, a := range attrs {
		if a.Attr.Type == nl.NLMSGERR_ATTR_MSG {
			return fmt.Errorf("%w: %s", err, unix.ByteSliceToString(a.Value))
		}
	}
	return err
}
