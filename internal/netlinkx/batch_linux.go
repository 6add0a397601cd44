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
// the same message. A long batch is written as it fills, a write at a
// time, so that it holds little memory; Flush writes the rest and returns
// every answer. Writes happen in the order queued. A Batch is not safe for
// concurrent use; several may write on one Handle at once.
type Batch struct {
	h    *Handle
	buf  []byte    // the unwritten messages, back to back
	ops  []batchOp // one per unwritten message, in order
	errs []error   // answers to every change written so far, in order

	// What the unwritten ops change, for their errors, by batchOp.idx.
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

// Len is the number of changes queued since the last Flush.
func (b *Batch) Len() int { return len(b.errs) + len(b.ops) }

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
	state := n.state()
	b.neighs = append(b.neighs, n)
	b.queueNeigh(batchOp{kind: opNeigh, idx: len(b.neighs) - 1}, unix.RTM_NEWNEIGH, unix.NLM_F_CREATE|unix.NLM_F_REPLACE,
		netlink.Ndmsg{Family: uint8(neighFamily(n.IP)), Index: uint32(n.LinkIndex), State: uint16(state), Type: unix.RTN_UNICAST},
		n.IP.AsSlice(), n.MAC[:])
}

// NeighDel queues `ip neigh del` of n (see Handle.NeighDel).
func (b *Batch) NeighDel(n Neigh) {
	b.neighs = append(b.neighs, n)
	b.queueNeigh(batchOp{kind: opNeigh, idx: len(b.neighs) - 1, delete: true}, unix.RTM_DELNEIGH, 0,
		netlink.Ndmsg{Family: uint8(neighFamily(n.IP)), Index: uint32(n.LinkIndex)},
		n.IP.AsSlice(), nil)
}

// FDBSet queues `bridge fdb replace` of e (see Handle.FDBSet).
func (b *Batch) FDBSet(e FDB) {
	b.fdbs = append(b.fdbs, e)
	b.queueNeigh(batchOp{kind: opFDB, idx: len(b.fdbs) - 1}, unix.RTM_NEWNEIGH, unix.NLM_F_CREATE|unix.NLM_F_REPLACE,
		netlink.Ndmsg{Family: unix.AF_BRIDGE, Index: uint32(e.LinkIndex), State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF},
		e.Dst.AsSlice(), e.MAC[:])
}

// FDBDel queues `bridge fdb del` of e (see Handle.FDBDel).
func (b *Batch) FDBDel(e FDB) {
	b.fdbs = append(b.fdbs, e)
	b.queueNeigh(batchOp{kind: opFDB, idx: len(b.fdbs) - 1, delete: true}, unix.RTM_DELNEIGH, 0,
		netlink.Ndmsg{Family: unix.AF_BRIDGE, Index: uint32(e.LinkIndex), Flags: netlink.NTF_SELF},
		e.Dst.AsSlice(), e.MAC[:])
}

// queueRoute builds the message the library's RouteReplace and RouteDel
// send (netlink's prepareRouteReq) for what toNLRoute sets.
func (b *Batch) queueRoute(r Route, typ, flags int, msg *nl.RtMsg, del bool) {
	req := nl.NewNetlinkRequest(typ, flags|unix.NLM_F_ACK)
	msg.Family, msg.Dst_len = unix.AF_INET, uint8(r.Dst.Bits())
	if r.Dst.Addr().Is6() {
		msg.Family = unix.AF_INET6
	}
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.RTA_DST, r.Dst.Addr().AsSlice()))
	if r.Gw.IsValid() {
		req.AddData(nl.NewRtAttr(unix.RTA_GATEWAY, r.Gw.AsSlice()))
		msg.Scope = unix.RT_SCOPE_UNIVERSE
	} else {
		msg.Scope = unix.RT_SCOPE_LINK
	}
	if r.Table > 0 {
		if r.Table >= 256 {
			msg.Table = unix.RT_TABLE_UNSPEC
			req.AddData(nl.NewRtAttr(unix.RTA_TABLE, nl.Uint32Attr(uint32(r.Table))))
		} else {
			msg.Table = uint8(r.Table)
		}
	}
	if r.Priority > 0 {
		req.AddData(nl.NewRtAttr(unix.RTA_PRIORITY, nl.Uint32Attr(uint32(r.Priority))))
	}
	msg.Flags = 0
	if r.OnLink {
		msg.Flags = unix.RTNH_F_ONLINK
	}
	req.AddData(nl.NewRtAttr(unix.RTA_OIF, nl.Uint32Attr(uint32(r.LinkIndex))))
	b.routes = append(b.routes, r)
	b.push(req, batchOp{kind: opRoute, idx: len(b.routes) - 1, delete: del})
}

// queueNeigh builds the message of the library's neighHandle for the
// fields weft sets: the header, NDA_DST and, if any, NDA_LLADDR.
func (b *Batch) queueNeigh(op batchOp, typ, flags int, msg netlink.Ndmsg, dst, lladdr []byte) {
	req := nl.NewNetlinkRequest(typ, flags|unix.NLM_F_ACK)
	req.AddData(&msg)
	req.AddData(nl.NewRtAttr(netlink.NDA_DST, dst))
	if lladdr != nil {
		req.AddData(nl.NewRtAttr(netlink.NDA_LLADDR, lladdr))
	}
	b.push(req, op)
}

// batchFill is how much a Batch queues before writing: one write's worth.
const batchFill = 256

func (b *Batch) push(req *nl.NetlinkRequest, op batchOp) {
	b.buf = append(b.buf, req.Serialize()...)
	op.end = len(b.buf)
	b.ops = append(b.ops, op)
	if len(b.ops) >= batchFill || len(b.buf) >= batchChunkBytes {
		b.write()
	}
}

// write sends the unwritten changes and keeps their answers.
func (b *Batch) write() {
	if len(b.ops) == 0 {
		return
	}
	errs := make([]error, len(b.ops))
	b.h.flush(b.buf, b.ops, errs)
	for i, err := range errs {
		op := b.ops[i]
		if op.delete {
			err = ignoreNotFound(err)
		}
		errs[i] = err
		if err != nil {
			errs[i] = fmt.Errorf("%s: %w", b.describe(op), err)
		}
	}
	b.errs = append(b.errs, errs...)
	b.buf, b.ops = b.buf[:0], b.ops[:0]
	b.routes, b.neighs, b.fdbs = b.routes[:0], b.neighs[:0], b.fdbs[:0]
}

// Flush writes what is left and returns one error per change queued since
// the last Flush, in the order queued: nil for each the kernel made (or,
// for a delete, found already gone), else what it answered, wrapped as the
// Handle method would wrap it. The batch is empty afterwards.
func (b *Batch) Flush() []error {
	b.write()
	errs := b.errs
	b.errs = nil
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
