package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/backend/wireguard"
	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lab/labtest"
	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/netlinkx/nstest"
)

// This kernel has no WireGuard module: every node runs the userspace
// device (wireguard-go in weftd), so "a kernel node and a userspace node
// interoperate" is shown as independently configured userspace devices
// interoperating: three weftd nodes among themselves and, in
// rogueDevice, one wireguard-go device the test configures itself.

// TestWireGuardBackend: three wireguard nodes reach each other pod to pod
// and node to pod, TCP runs both ways, and on the underlay nothing but
// WireGuard's UDP passes between the nodes: no payload, no pod address.
func TestWireGuardBackend(t *testing.T) {
	labtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := upLab(t, ctx, lab.Options{Nodes: 3, PodsPerNode: 1, Backend: "wireguard"})
	e.mesh(ctx)

	a, b := e.l.Node(1).Pods[0], e.l.Node(2).Pods[0]
	for _, dir := range []struct{ from, to lab.Pod }{{a, b}, {b, a}} {
		r, err := lab.Iperf(ctx, dir.from.NS, dir.to.NS, dir.to.IP, 2*time.Second, 1)
		if err != nil {
			t.Fatalf("TCP %s -> %s: %v", dir.from.Name, dir.to.Name, err)
		}
		t.Logf("TCP %s -> %s over wireguard: %.2f Gbit/s, %d retransmits", dir.from.Name, dir.to.Name, r.Bps/1e9, r.Retransmits)
		if r.Bps < 10e6 {
			t.Errorf("TCP %s -> %s: %.1f Mbit/s", dir.from.Name, dir.to.Name, r.Bps/1e6)
		}
	}

	t.Run("encrypted on the wire", func(t *testing.T) { testEncrypted(t, ctx, e) })
	t.Run("not a peer or a wrong key never reaches a pod", func(t *testing.T) { testRogue(t, ctx, e) })
	t.Run("key survives a restart, a new key converges", func(t *testing.T) { testKey(t, ctx, e) })
	e.mesh(ctx)
	t.Run("the device's sockets are never reopened in vain", func(t *testing.T) { testNoRebind(t, e) })
	t.Run("weft doctor probes through WireGuard and names a blocked tunnel", func(t *testing.T) { testDoctor(t, ctx, e) })
}

// testDoctor: weft doctor on node 1 finds every check ok, each peer
// answering through flannel-wg with the full pod MTU, and the buffers
// wireguard-go's sockets got; with UDP 51820 from node 1 dropped in node
// 2, it names the WireGuard hop to node 2, with the fix.
func testDoctor(t *testing.T, ctx context.Context, e *env) {
	n1, n2 := e.l.Node(1), e.l.Node(2)
	doctor := func() (doctorReport, bool) { return e.doctor(t, ctx, 1) }
	dev, err := e.h[1].LinkByName(wireguard.DeviceName)
	if err != nil {
		t.Fatal(err)
	}
	mtu := dev.Attrs().MTU // the pod MTU
	r, ok := doctor()
	var peers []string
	buffers := "none"
	for _, x := range r.Results {
		if x.Status != "ok" {
			t.Errorf("healthy: %s is %s: %s | %s", x.Check, x.Status, x.Message, x.Hint)
		}
		switch x.Check {
		case "peer":
			peers = append(peers, x.Message)
		case "socket-buffers":
			buffers = x.Message
		}
	}
	t.Logf("socket-buffers: %s; peers: %q", buffers, peers)
	if !strings.HasPrefix(buffers, "weftd's sockets on UDP 51820 got 7340032-byte receive and 7340032-byte send buffers, the 7340032 wireguard-go asks for") {
		t.Errorf("socket-buffers: %s", buffers)
	}
	for _, n := range []*lab.Node{e.l.Node(2), e.l.Node(3)} {
		w := fmt.Sprintf("%s (%s): underlay ", n.PublicIP, n.Subnet.Masked())
		if !slices.ContainsFunc(peers, func(p string) bool {
			return strings.HasPrefix(p, w) && strings.Contains(p, ", wireguard ") && strings.Contains(p, fmt.Sprintf(", %d-byte DF ", mtu))
		}) {
			t.Errorf("node %d not answering through WireGuard with %d-byte packets: %q", n.Index, mtu, peers)
		}
	}
	if !ok || !r.OK {
		t.Fatalf("healthy: doctor failed: %+v", r)
	}

	for _, cmd := range []string{
		"add table inet e2edoctor",
		"add chain inet e2edoctor input { type filter hook input priority 0 ; }",
		fmt.Sprintf("add rule inet e2edoctor input ip saddr %s udp dport 51820 drop", n1.PublicIP),
	} {
		if out, err := e.l.Exec(ctx, n2.NS, "nft", cmd); err != nil {
			t.Fatalf("nft %s: %v\n%s", cmd, err, out)
		}
	}
	defer func() {
		if out, err := e.l.Exec(ctx, n2.NS, "nft", "delete table inet e2edoctor"); err != nil {
			t.Errorf("nft: %v\n%s", err, out)
		}
	}()
	r, ok = doctor()
	w := fmt.Sprintf("WireGuard (UDP 51820) to %s: no answer through the tunnel while the underlay passes ICMP — a firewall drops it, or the keys do not match", n2.PublicIP)
	found := false
	for _, x := range r.Results {
		found = found || x.Check == "peer" && x.Status == "fail" && x.Message == w && strings.Contains(x.Hint, "allow UDP 51820 between the nodes") && strings.Contains(x.Hint, "wg show flannel-wg")
	}
	if ok || !found {
		t.Errorf("UDP 51820 dropped: doctor exit 0 %v, want %q with its fix:\n%+v", ok, w, r)
	}
}

// testNoRebind: through starts, restarts and full reconciles, no weftd
// had wireguard-go refuse a setting. Setting an unchanged listen_port
// makes it reopen its sockets, which has failed with EADDRINUSE and left
// the device without one until the next reconcile.
func testNoRebind(t *testing.T, e *env) {
	for _, n := range e.l.Nodes {
		b, err := os.ReadFile(n.Log)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "IPC error") {
				t.Errorf("node %d: %s", n.Index, line)
			}
		}
	}
}

// pattern is what the pings carry, 16 bytes repeated through the payload.
const pattern = "5765667453656372657450617474e4e5"

func testEncrypted(t *testing.T, ctx context.Context, e *env) {
	checkEncrypted(t, ctx, e, e.l.Node(2).Pods[0].IP, 51820)
}

// checkEncrypted pings dst, node 2's pod's address of one family, from
// node 1's pod with the payload pattern while capturing on every port of
// the underlay switch: neither the pattern nor any pod address (of
// either family) may be on the wire, and every packet between two nodes'
// public addresses (IPv4 or IPv6, neighbour discovery aside) must be UDP
// to or from WireGuard's port, at least ten of them. Packets of the
// node's other WireGuard device (ports in other) are let pass: its
// sessions keep their own timers, whatever the ping does.
func checkEncrypted(t *testing.T, ctx context.Context, e *env, dst netip.Addr, port uint16, other ...uint16) {
	t.Helper()
	ul := labNS(t, e.l.State.UnderlayNS)
	capCtx, stop := context.WithCancel(ctx)
	// Every port of the switch: frames bridged between ports never pass
	// br0 itself.
	frames := capture(t, capCtx, ul, "")
	a := e.l.Node(1).Pods[0]
	out, err := e.l.Exec(ctx, a.NS, "ping", "-c", "5", "-i", "0.2", "-s", "512", "-p", pattern, dst.String())
	if err != nil {
		t.Fatalf("ping %s with pattern: %v\n%s", dst, err, out)
	}
	time.Sleep(200 * time.Millisecond)
	stop()
	got := <-frames

	pat, _ := hex.DecodeString(pattern)
	var networks []netip.Prefix
	if e.l.HasIPv4() {
		networks = append(networks, netip.MustParsePrefix(e.l.State.Network))
	}
	if e.l.HasIPv6() {
		networks = append(networks, netip.MustParsePrefix(e.l.State.IPv6Network))
	}
	pod := func(a netip.Addr) bool {
		return slices.ContainsFunc(networks, func(n netip.Prefix) bool { return n.Contains(a) })
	}
	nodes := map[netip.Addr]bool{}
	for _, n := range e.l.Nodes {
		nodes[n.PublicIP] = true
		if n.PublicIPv6.IsValid() {
			nodes[n.PublicIPv6] = true
		}
	}
	wg := 0
	for _, f := range got {
		if bytes.Contains(f, pat) {
			t.Fatalf("the ping's payload pattern is on the underlay in clear: % x", f)
		}
		p, ok := parseIPv4(f)
		if !ok {
			if p, ok = parseIPv6(f); !ok || p.proto == unix.IPPROTO_ICMPV6 && p.icmpType >= 133 && p.icmpType <= 137 {
				continue // ARP, IPv6 neighbour discovery
			}
		}
		if pod(p.src) || pod(p.dst) {
			t.Fatalf("a pod address on the underlay: %s -> %s proto %d", p.src, p.dst, p.proto)
		}
		if !nodes[p.src] || !nodes[p.dst] {
			continue // the control plane (etcd)
		}
		if p.proto == unix.IPPROTO_UDP && (slices.Contains(other, p.sport) || slices.Contains(other, p.dport)) {
			t.Logf("the other device's WireGuard meanwhile: %s:%d -> %s:%d, %d bytes", p.src, p.sport, p.dst, p.dport, len(f))
			continue
		}
		if p.proto != unix.IPPROTO_UDP || p.sport != port && p.dport != port {
			t.Errorf("node to node, not WireGuard on port %d: %s:%d -> %s:%d proto %d", port, p.src, p.sport, p.dst, p.dport, p.proto)
			continue
		}
		wg++
	}
	// 5 echo requests and 5 replies at least.
	if wg < 10 {
		t.Errorf("captured %d WireGuard datagrams between nodes (of %d frames), want at least 10", wg, len(got))
	}
	t.Logf("ping %s: %d frames on br0, %d of them WireGuard (UDP %d) between nodes; no pattern, no pod address", dst, len(got), wg, port)
}

// testRogue: a WireGuard device that is not a peer (its own key, an
// address no lease names) dials node 1 as if it were; and a datagram
// that is not WireGuard at all (an inner packet as the udp backend sends
// it) goes to node 1's port. Neither reaches node 1's pod, and node 1
// counts the refused handshakes.
func testRogue(t *testing.T, ctx context.Context, e *env) {
	n1 := e.l.Node(1)
	pod := n1.Pods[0]
	pub := readPublicKey(t, n1.WGKeyFile())
	ul := labNS(t, e.l.State.UnderlayNS)
	rogue := nstest.New(t)
	_, port := nstest.Veth(t, rogue, "eth0", netip.MustParsePrefix("192.0.2.77/24"), ul, "rogue0", netip.Prefix{})
	if err := ul.H.LinkSetMaster(port, ul.Link(t, "br0")); err != nil {
		t.Fatal(err)
	}
	inner := netip.MustParseAddr("10.244.250.7")
	rogueDevice(t, rogue, inner, pub, netip.AddrPortFrom(n1.PublicIP, 51820), e.subnet(1))

	before := metric(t, ctx, e, 1, `weft_wireguard_dropped_total{device="flannel-wg",reason="invalid_handshake"}`)
	beforeRaw := metric(t, ctx, e, 1, `weft_wireguard_dropped_total{device="flannel-wg",reason="unknown_type"}`)
	podCtx, stop := context.WithCancel(ctx)
	podNS := labNS(t, pod.NS)
	frames := capture(t, podCtx, podNS, "eth0")
	// The rogue's pings (its device retries the handshake meanwhile).
	out, err := rogue.Exec("ping", "-c", "3", "-W", "1", pod.IP.String())
	if err == nil {
		t.Fatalf("a device that is not a peer pinged %s: %s", pod.IP, out)
	}
	// A bare inner packet, as the udp backend would send it, to port 51820.
	raw := icmpEcho(inner, pod.IP)
	if _, err := rogue.Exec("bash", "-c", fmt.Sprintf("printf '%s' > /dev/udp/%s/51820", octal(raw), n1.PublicIP)); err != nil {
		t.Fatalf("raw datagram: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	stop()
	for _, f := range <-frames {
		if p, ok := parseIPv4(f); ok && p.src == inner {
			t.Fatalf("a packet from the rogue reached the pod: %s -> %s proto %d", p.src, p.dst, p.proto)
		}
	}
	// The rogue's first initiation may have gone out as its device came
	// up, before the first reading; it retries every 5 s (REKEY_TIMEOUT)
	// while it has packets to send.
	var after float64
	if _, err := waitFor(ctx, 8*time.Second, func() error {
		_, _ = rogue.Exec("ping", "-c", "1", "-W", "1", pod.IP.String())
		if after = metric(t, ctx, e, 1, `weft_wireguard_dropped_total{device="flannel-wg",reason="invalid_handshake"}`); after <= before {
			return fmt.Errorf("%v refused handshakes, %v before", after, before)
		}
		return nil
	}); err != nil {
		t.Errorf("node 1 counted no refused handshake: %v", err)
	}
	if raw := metric(t, ctx, e, 1, `weft_wireguard_dropped_total{device="flannel-wg",reason="unknown_type"}`); raw <= beforeRaw {
		t.Errorf("node 1 counted no refused non-WireGuard datagram (%v before, %v after)", beforeRaw, raw)
	}
	t.Logf("node 1 refused %v handshakes from the rogue", after-before)
}

// testKey: a restart keeps the node's PublicKey; with the key file gone,
// a restart publishes a new key, and the other nodes reach the node's pod
// again, over each family of the lab, within 2 s of its new lease. With
// IPv6 the lease's BackendV6Data carries the same key as its BackendData.
func testKey(t *testing.T, ctx context.Context, e *env) {
	key := func() string {
		a, ok, err := e.getLease(ctx, e.leaseKey(1))
		if err != nil || !ok {
			t.Fatalf("lease of node 1: %v (found %v)", err, ok)
		}
		var d, d6 wireguard.LeaseData
		if err := json.Unmarshal(a.BackendData, &d); err != nil {
			t.Fatal(err)
		}
		if e.l.HasIPv6() {
			if err := json.Unmarshal(a.BackendV6Data, &d6); err != nil || d6.PublicKey != d.PublicKey {
				t.Fatalf("BackendV6Data %s (%v), BackendData %s: want one key", a.BackendV6Data, err, a.BackendData)
			}
		}
		return d.PublicKey
	}
	k0 := key()
	if err := e.l.RestartAgent(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if k := key(); k != k0 {
		t.Fatalf("PublicKey changed across a restart: %s -> %s", k0, k)
	}
	info, err := os.Stat(e.l.Node(1).WGKeyFile())
	if err != nil || info.Mode().Perm() != 0o400 {
		t.Fatalf("key file: %v, mode %v; want 0400", err, info.Mode())
	}

	if err := os.Remove(e.l.Node(1).WGKeyFile()); err != nil {
		t.Fatal(err)
	}
	if err := e.l.RestartAgent(ctx, 1); err != nil {
		t.Fatal(err)
	}
	k1 := key()
	if k1 == k0 {
		t.Fatalf("a deleted key file gave the same key %s", k1)
	}
	pod := e.l.Node(1).Pods[0]
	for _, i := range []int{2, 3} {
		from := e.l.Node(i).Pods[0]
		for _, dst := range []netip.Addr{pod.IP, pod.IP6} {
			if !dst.IsValid() {
				continue
			}
			took, err := waitFor(ctx, 2*time.Second, func() error {
				_, err := e.l.Exec(ctx, from.NS, "ping", "-c", "1", "-W", "1", dst.String())
				return err
			})
			if err != nil {
				t.Fatalf("node %d's pod does not reach node 1's pod %s 2 s after its new key: %v", i, dst, err)
			}
			t.Logf("node %d reached node 1's pod %s with its new key after %v", i, dst, took.Round(time.Millisecond))
		}
	}
}

// labNS wraps a lab namespace for nstest's helpers; closed with the test.
func labNS(t *testing.T, name string) *nstest.NS {
	path := filepath.Join("/run/netns", name)
	n, err := ns.GetNS(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	h, err := netlinkx.NewAt(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return &nstest.NS{Name: name, Path: path, NetNS: n, H: h}
}

// capture reads every frame on link dev of namespace s, or on all its
// links for "", (an AF_PACKET socket made in it) until ctx ends, then
// sends them on the channel.
func capture(t *testing.T, ctx context.Context, s *nstest.NS, dev string) <-chan [][]byte {
	t.Helper()
	idx := 0
	if dev != "" {
		idx = s.Link(t, dev).Attrs().Index
	}
	var fd int
	err := s.NetNS.Do(func(ns.NetNS) error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: idx})
	})
	if err != nil {
		t.Fatalf("capture on %s: %v", dev, err)
	}
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	out := make(chan [][]byte, 1)
	var once sync.Once
	go func() {
		defer once.Do(func() { unix.Close(fd) })
		var frames [][]byte
		buf := make([]byte, 65536)
		for ctx.Err() == nil {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				continue // the timeout, to look at ctx
			}
			frames = append(frames, bytes.Clone(buf[:n]))
		}
		out <- frames
	}()
	return out
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

type ipPacket struct {
	src, dst     netip.Addr
	proto        int
	sport, dport uint16
	icmpType     uint8 // ICMPv6's, in parseIPv6
}

// parseIPv4 reads an Ethernet frame's IPv4 header and UDP/TCP ports.
func parseIPv4(f []byte) (ipPacket, bool) {
	if len(f) < 14+20 || binary.BigEndian.Uint16(f[12:14]) != unix.ETH_P_IP {
		return ipPacket{}, false
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	p := ipPacket{src: netip.AddrFrom4([4]byte(ip[12:16])), dst: netip.AddrFrom4([4]byte(ip[16:20])), proto: int(ip[9])}
	if (p.proto == unix.IPPROTO_UDP || p.proto == unix.IPPROTO_TCP) && len(ip) >= ihl+4 {
		p.sport, p.dport = binary.BigEndian.Uint16(ip[ihl:]), binary.BigEndian.Uint16(ip[ihl+2:])
	}
	return p, true
}

// parseIPv6 reads an Ethernet frame's IPv6 header (without extension
// headers: the lab sends none) and UDP/TCP ports or ICMPv6 type.
func parseIPv6(f []byte) (ipPacket, bool) {
	if len(f) < 14+40 || binary.BigEndian.Uint16(f[12:14]) != unix.ETH_P_IPV6 {
		return ipPacket{}, false
	}
	ip := f[14:]
	p := ipPacket{src: netip.AddrFrom16([16]byte(ip[8:24])), dst: netip.AddrFrom16([16]byte(ip[24:40])), proto: int(ip[6])}
	switch l4 := ip[40:]; {
	case (p.proto == unix.IPPROTO_UDP || p.proto == unix.IPPROTO_TCP) && len(l4) >= 4:
		p.sport, p.dport = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
	case p.proto == unix.IPPROTO_ICMPV6 && len(l4) >= 1:
		p.icmpType = l4[0]
	}
	return p, true
}

// rogueDevice runs wireguard-go in s with a key of its own, address
// inner, and node 1 as its peer for AllowedIPs allowed.
func rogueDevice(t *testing.T, s *nstest.NS, inner netip.Addr, peer wgtypes.Key, ep netip.AddrPort, allowed netip.Prefix) {
	t.Helper()
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	var dev *device.Device
	err = s.NetNS.Do(func(ns.NetNS) error {
		td, err := tun.CreateTUN("wg0", 1420)
		if err != nil {
			return err
		}
		dev = device.NewDevice(td, conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
		conf := fmt.Sprintf("private_key=%s\nlisten_port=0\npublic_key=%s\nendpoint=%s\nallowed_ip=%s\n",
			hex.EncodeToString(priv[:]), hex.EncodeToString(peer[:]), ep, allowed)
		if err := dev.IpcSet(conf); err != nil {
			return err
		}
		return dev.Up()
	})
	if err != nil {
		t.Fatalf("rogue device: %v", err)
	}
	t.Cleanup(dev.Close)
	wg0 := s.Link(t, "wg0")
	if err := s.H.AddrReplace(wg0, netip.PrefixFrom(inner, 32)); err != nil {
		t.Fatal(err)
	}
	if err := s.H.LinkSetUp(wg0); err != nil {
		t.Fatal(err)
	}
	if err := s.H.RouteReplace(netlinkx.Route{Dst: allowed, LinkIndex: wg0.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
}

func readPublicKey(t *testing.T, keyFile string) wgtypes.Key {
	t.Helper()
	k, _, err := wireguard.LoadKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

// metric reads one sample from node i's /metrics.
func metric(t *testing.T, ctx context.Context, e *env, i int, name string) float64 {
	t.Helper()
	_, out, err := e.l.Metrics(ctx, i)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err == nil {
				return f
			}
		}
	}
	t.Fatalf("no %s in node %d's metrics", name, i)
	return 0
}

// icmpEcho is an IPv4 echo request from src to dst with 36 bytes of
// data: longer than WireGuard's shortest message, which it drops unread.
func icmpEcho(src, dst netip.Addr) []byte {
	p := make([]byte, 64)
	p[0], p[8], p[9] = 0x45, 64, unix.IPPROTO_ICMP
	binary.BigEndian.PutUint16(p[2:], 64)
	copy(p[12:], src.AsSlice())
	copy(p[16:], dst.AsSlice())
	binary.BigEndian.PutUint16(p[10:], checksum(p[:20]))
	p[20] = 8
	binary.BigEndian.PutUint16(p[22:], checksum(p[20:]))
	return p
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

func octal(b []byte) string {
	var sb strings.Builder
	for _, c := range b {
		fmt.Fprintf(&sb, "\\%03o", c)
	}
	return sb.String()
}
