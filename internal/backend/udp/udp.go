// Package udp is flannel's "udp" backend, done fast: a TUN device
// flannel0 routes the cluster network into this process, which sends each
// inner IPv4 packet, unchanged and with no header of its own, as one UDP
// datagram to the node whose lease holds the destination (port 8285), and
// writes what peers send back into flannel0. A weft node and a flannel node
// speak it together.
//
// Where flannel's C loop moves one packet per system call, this one moves
// batches: the TUN device runs with IFF_VNET_HDR so that the kernel hands
// over whole TCP segments (split here) and takes coalesced ones back, and
// the socket sends with UDP GSO and sendmmsg and receives with UDP GRO and
// recvmmsg — wireguard-go's tun and conn packages, which do all of that.
//
// It also behaves as a router should: TTL decremented, ICMP errors for an
// unknown destination, an expired TTL or a packet too big, and it accepts a
// datagram only from the address and port of a current lease and only with
// an inner source inside that lease's subnet.
package udp

import (
	"fmt"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
)

const (
	// DeviceName is flannel's name for the TUN device.
	DeviceName = "flannel0"
	// overhead is what encapsulation adds: an outer IPv4 and UDP header.
	overhead = 20 + 8
	minMTU   = 576 // the least every IPv4 host must accept (RFC 791)

	// SocketBuffer is the receive and send buffer the datapath's socket
	// asks for: wireguard-go's conn.StdNetBind sets SO_RCVBUF/SO_SNDBUF
	// (capped by net.core.rmem_max/wmem_max) and, with CAP_NET_ADMIN,
	// SO_RCVBUFFORCE/SO_SNDBUFFORCE to 7 MiB (conn/controlfns.go).
	SocketBuffer = 7 << 20
)

// settings are what the backend derives from its parameters.
type settings struct {
	port uint16
	mtu  int
}

func deriveSettings(p backend.Params) (settings, error) {
	if p.Network == nil {
		return settings{}, fmt.Errorf("udp backend: no network config")
	}
	if !p.Network.EnableIPv4 || !p.Network.Network.Addr().Is4() {
		return settings{}, fmt.Errorf("udp backend: carries IPv4 only, and the network has no IPv4 range")
	}
	b := p.Network.Backend
	s := settings{port: config.DefaultUDPPort, mtu: b.MTU}
	if b.Port != 0 {
		if b.Port < 0 || b.Port > 65535 {
			return settings{}, fmt.Errorf("udp backend: port %d out of range", b.Port)
		}
		s.port = uint16(b.Port)
	}
	if s.mtu == 0 {
		if p.Ext.MTU <= 0 {
			return settings{}, fmt.Errorf("udp backend: MTU of %s unknown and Backend.MTU not set", p.Ext.Name)
		}
		s.mtu = p.Ext.MTU - overhead
	}
	if s.mtu < minMTU {
		return settings{}, fmt.Errorf("udp backend: MTU %d is below %d (underlay %s has %d)", s.mtu, minMTU, p.Ext.Name, p.Ext.MTU)
	}
	return s, nil
}
