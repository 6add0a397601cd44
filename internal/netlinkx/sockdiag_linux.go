package netlinkx

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// sock_diag (linux/inet_diag.h, linux/sock_diag.h).
const (
	inetDiagReqLen  = 56 // struct inet_diag_req_v2
	inetDiagMsgLen  = 72 // struct inet_diag_msg
	inetDiagSKMem   = 7  // INET_DIAG_SKMEMINFO: __u32[SK_MEMINFO_VARS]
	skMemInfoRcvBuf = 1  // SK_MEMINFO_RCVBUF
	skMemInfoSndBuf = 3  // SK_MEMINFO_SNDBUF
)

// diagReq is an inet_diag_req_v2 asking for every UDP socket of family
// bound to port (the kernel filters on the source port) with its
// memory limits.
type diagReq struct {
	family uint8
	port   uint16
}

func (r diagReq) Len() int { return inetDiagReqLen }

func (r diagReq) Serialize() []byte {
	b := make([]byte, inetDiagReqLen)
	b[0], b[1], b[2] = r.family, unix.IPPROTO_UDP, 1<<(inetDiagSKMem-1)
	nl.NativeEndian().PutUint32(b[4:8], 0xffffffff) // every state
	binary.BigEndian.PutUint16(b[8:10], r.port)     // idiag_sport
	return b
}

// UDPSockets lists the UDP sockets, IPv4 and IPv6, of the calling thread's
// network namespace bound to port, with the buffer limits each got. It
// only reads (SOCK_DIAG_BY_FAMILY dumps).
func UDPSockets(port uint16) ([]UDPSocket, error) {
	var out []UDPSocket
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := retry(fmt.Sprintf("listing UDP sockets on port %d", port), func() ([]UDPSocket, error) {
			req := nl.NewNetlinkRequest(nl.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP)
			req.AddData(diagReq{family: fam, port: port})
			var socks []UDPSocket
			var perr error
			err := req.ExecuteIter(unix.NETLINK_INET_DIAG, nl.SOCK_DIAG_BY_FAMILY, func(msg []byte) bool {
				s, err := parseDiagMsg(msg)
				if err != nil {
					perr = err
					return false
				}
				if s.Local.Port() == port {
					socks = append(socks, s)
				}
				return true
			})
			if err == nil {
				err = perr
			}
			return socks, err
		})
		if err != nil {
			return nil, err
		}
		out = append(out, socks...)
	}
	return out, nil
}

// parseDiagMsg reads an inet_diag_msg and its INET_DIAG_SKMEMINFO.
func parseDiagMsg(msg []byte) (UDPSocket, error) {
	if len(msg) < inetDiagMsgLen {
		return UDPSocket{}, fmt.Errorf("sock_diag: message of %d bytes, want %d", len(msg), inetDiagMsgLen)
	}
	var ip netip.Addr
	if msg[0] == unix.AF_INET {
		ip = netip.AddrFrom4([4]byte(msg[8:12]))
	} else {
		ip = netip.AddrFrom16([16]byte(msg[8:24]))
	}
	s := UDPSocket{Local: netip.AddrPortFrom(ip, binary.BigEndian.Uint16(msg[4:6]))}
	attrs, err := nl.ParseRouteAttr(msg[inetDiagMsgLen:])
	if err != nil {
		return UDPSocket{}, fmt.Errorf("sock_diag: %w", err)
	}
	for _, a := range attrs {
		if a.Attr.Type == inetDiagSKMem && len(a.Value) >= 4*(skMemInfoSndBuf+1) {
			s.RcvBuf = int(nl.NativeEndian().Uint32(a.Value[4*skMemInfoRcvBuf:]))
			s.SndBuf = int(nl.NativeEndian().Uint32(a.Value[4*skMemInfoSndBuf:]))
		}
	}
	return s, nil
}
