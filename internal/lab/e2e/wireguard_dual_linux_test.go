package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/internal/backend/wireguard"
	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lab/labtest"
	"github.com/weft-net/weft/internal/netlinkx"
)

// TestWireGuardDualStack: three dual-stack wireguard nodes in flannel's
// default mode (separate: flannel-wg for IPv4, flannel-wg-v6 on
// ListenPortV6 for IPv6). Every pod reaches every pod over both families,
// TCP over IPv6 runs both ways, and on the underlay the IPv6 pings are
// UDP to port 51821 only. The leases carry flannel's BackendV6Data with
// the one key; a deleted flannel-wg-v6 heals; the key survives a restart
// and a new key converges over both families. Then the cluster moves to
// mode auto (one flannel-wg for both families): flannel-wg-v6 goes, and
// IPv6 pod traffic crosses over IPv4 on port 51820.
func TestWireGuardDualStack(t *testing.T) {
	labtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := upLab(t, ctx, lab.Options{
		Nodes: 3, PodsPerNode: 1, Backend: "wireguard", IPFamily: lab.IPFamilyDual,
		WeftdArgs: []string{"--resync-period=" + resync.String()},
	})
	e.mesh(ctx)

	runScenarios(t, ctx, e, e, []scenario[*env]{
		{"IPv6StreamBothWays", func(t *testing.T, ctx context.Context, e *env) {
			a, b := e.l.Node(1).Pods[0], e.l.Node(2).Pods[0]
			for _, dir := range []struct{ from, to lab.Pod }{{a, b}, {b, a}} {
				r, err := lab.Iperf(ctx, dir.from.NS, dir.to.NS, dir.to.IP6, 2*time.Second, 1)
				if err != nil {
					t.Fatalf("IPv6 TCP %s -> %s: %v", dir.from.Name, dir.to.Name, err)
				}
				t.Logf("IPv6 TCP %s -> %s over wireguard: %.2f Gbit/s, %d retransmits", dir.from.Name, dir.to.Name, r.Bps/1e9, r.Retransmits)
				if r.Bps < 10e6 {
					t.Errorf("IPv6 TCP %s -> %s: %.1f Mbit/s", dir.from.Name, dir.to.Name, r.Bps/1e6)
				}
			}
		}},
		{"EncryptedOnTheWireIPv6", func(t *testing.T, ctx context.Context, e *env) {
			checkEncrypted(t, ctx, e, e.l.Node(2).Pods[0].IP6, 51821, 51820)
		}},
		{"DualLease", testWireGuardDualLease},
		{"DeletedV6DeviceHeals", testWireGuardHeal6},
		{"KeySurvivesRestartNewKeyConverges", testKey},
		{"ModeAuto", testWireGuardModeAuto},
	})
	testNoRebind(t, e)
}

// testWireGuardDualLease: each lease is flannel's dual-stack wireguard
// lease: PublicIPv6, BackendData on ListenPort and BackendV6Data on
// ListenPortV6, one key; each node's devices hold its subnets.
func testWireGuardDualLease(t *testing.T, ctx context.Context, e *env) {
	for _, n := range e.l.Nodes {
		key := e.leaseKey(n.Index)
		a, ok, err := e.getLease(ctx, key)
		if err != nil || !ok {
			t.Fatalf("lease %s: %v %v", key, ok, err)
		}
		pub := readPublicKey(t, n.WGKeyFile()).String()
		if a.PublicIPv6 == nil || *a.PublicIPv6 != n.PublicIPv6 {
			t.Errorf("lease %s: PublicIPv6 %v, want %s", key, a.PublicIPv6, n.PublicIPv6)
		}
		if want := fmt.Sprintf(`{"PublicKey":%q,"Port":51820}`, pub); string(a.BackendData) != want {
			t.Errorf("lease %s: BackendData %s, want %s", key, a.BackendData, want)
		}
		if want := fmt.Sprintf(`{"PublicKey":%q,"Port":51821}`, pub); string(a.BackendV6Data) != want {
			t.Errorf("lease %s: BackendV6Data %s, want %s", key, a.BackendV6Data, want)
		}
		if err := e.wgDevicesErr(n.Index, false); err != nil {
			t.Error(err)
		}
	}
}

// wgDevicesErr says what of node i's wireguard devices is not as weftd
// sets them: in mode separate flannel-wg with the IPv4 /32 and the route
// to Network, flannel-wg-v6 with the IPv6 /128 and the route to
// IPv6Network; with single, flannel-wg with both and no flannel-wg-v6.
func (e *env) wgDevicesErr(i int, single bool) error {
	h, n := e.h[i], e.l.Node(i)
	type want struct {
		dev     string
		addr    netip.Prefix
		network netip.Prefix
	}
	dev6 := wireguard.DeviceNameV6
	if single {
		dev6 = wireguard.DeviceName
		if _, err := h.LinkByName(wireguard.DeviceNameV6); !netlinkx.IsNotFound(err) {
			return fmt.Errorf("node %d: %s still there in a single-device mode (%v)", i, wireguard.DeviceNameV6, err)
		}
	}
	for _, w := range []want{
		{wireguard.DeviceName, netip.PrefixFrom(n.Subnet.Masked().Addr(), 32), netip.MustParsePrefix(e.l.State.Network)},
		{dev6, netip.PrefixFrom(n.Subnet6.Masked().Addr(), 128), netip.MustParsePrefix(e.l.State.IPv6Network)},
	} {
		l, err := h.LinkByName(w.dev)
		if err != nil {
			return fmt.Errorf("node %d: %s: %w", i, w.dev, err)
		}
		fam := netlinkx.FamilyV4
		if w.addr.Addr().Is6() {
			fam = netlinkx.FamilyV6
		}
		addrs, err := h.AddrList(l, fam)
		if err != nil {
			return err
		}
		if !slices.Contains(addrs, w.addr) {
			return fmt.Errorf("node %d: %s has %v, not %s", i, w.dev, addrs, w.addr)
		}
		rs, err := h.RouteList(netlinkx.RouteFilter{Family: fam, LinkIndex: l.Attrs().Index})
		if err != nil {
			return err
		}
		if !containsFunc(rs, func(r netlinkx.Route) bool { return r.Dst == w.network && !r.Gw.IsValid() }) {
			return fmt.Errorf("node %d: no route %s dev %s", i, w.network, w.dev)
		}
		if l.Attrs().MTU != 1500-wireguard.Overhead {
			return fmt.Errorf("node %d: %s MTU %d, want %d", i, w.dev, l.Attrs().MTU, 1500-wireguard.Overhead)
		}
	}
	return nil
}

// testWireGuardHeal6: flannel-wg-v6 deleted by hand (its wireguard-go
// stops with it) comes back with its address, route and peers, and IPv6
// pod traffic flows again, within a resync; IPv4 never stops.
func testWireGuardHeal6(t *testing.T, ctx context.Context, e *env) {
	const i = 1
	p4 := e.startPing(ctx, e.l.Node(2).Pods[0].NS, e.l.Node(i).Pods[0].IP)
	if _, err := e.l.Exec(ctx, e.l.Node(i).NS, "ip", "link", "del", wireguard.DeviceNameV6); err != nil {
		t.Fatal(err)
	}
	from, to := e.l.Node(2).Pods[0], e.l.Node(i).Pods[0]
	took, err := waitFor(ctx, resync+slack, func() error {
		if err := e.wgDevicesErr(i, false); err != nil {
			return err
		}
		_, err := e.l.Exec(ctx, from.NS, "ping", "-c", "1", "-W", "1", to.IP6.String())
		return err
	})
	if err != nil {
		t.Fatalf("%s deleted: not back, or IPv6 pods cut off: %v", wireguard.DeviceNameV6, err)
	}
	t.Logf("%s deleted: back, IPv6 pod to pod again, in %s", wireguard.DeviceNameV6, took.Round(time.Millisecond))
	sent, received, _, err := p4.stop()
	if err != nil {
		t.Fatal(err)
	}
	if received < sent-1 { // the last echo may still be in flight
		t.Errorf("IPv4 pings lost while %s was gone: %d of %d answered", wireguard.DeviceNameV6, received, sent)
	}
}

// testWireGuardModeAuto: the network config moves to Mode auto and every
// agent restarts: each runs flannel-wg alone with both families (the
// leftover flannel-wg-v6 removed), pods reach each other over both, and
// IPv6 pings cross the underlay as WireGuard over IPv4 on port 51820 (the
// lab's 192.0.2.0/24 is not RFC 1918 space, so flannel's auto rule picks
// IPv4). The leases keep BackendV6Data on ListenPortV6, as flannel's.
func testWireGuardModeAuto(t *testing.T, ctx context.Context, e *env) {
	s := e.l.State
	e.put(ctx, configKey, fmt.Sprintf(`{"Network":%q,"EnableIPv6":true,"IPv6Network":%q,"Backend":{"Type":"wireguard","Mode":"auto"}}`, s.Network, s.IPv6Network))
	for _, n := range e.l.Nodes {
		if err := e.l.RestartAgent(ctx, n.Index); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range e.l.Nodes {
		if _, err := waitFor(ctx, resync+slack, func() error { return e.wgDevicesErr(n.Index, true) }); err != nil {
			t.Fatal(err)
		}
	}
	e.mesh(ctx)
	checkEncrypted(t, ctx, e, e.l.Node(2).Pods[0].IP6, 51820)
	a, ok, err := e.getLease(ctx, e.leaseKey(1))
	if err != nil || !ok {
		t.Fatalf("lease of node 1: %v %v", ok, err)
	}
	if want := fmt.Sprintf(`{"PublicKey":%q,"Port":51821}`, readPublicKey(t, e.l.Node(1).WGKeyFile())); string(a.BackendV6Data) != want {
		t.Errorf("mode auto: BackendV6Data %s, want %s", a.BackendV6Data, want)
	}
}

// TestWireGuardKubeIPv6Only: an IPv6-only network (EnableIPv4 false) with
// wireguard, on the Kubernetes store (as flannel: its etcd keys need an
// IPv4 part). Each agent runs flannel-wg-v6 alone and publishes flannel's
// backend-v6-data and public-ipv6; every pod reaches every pod over IPv6,
// and a stream crosses.
func TestWireGuardKubeIPv6Only(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := upKubeLab(t, ctx, lab.Options{Nodes: 3, PodsPerNode: 1, Backend: "wireguard", IPFamily: lab.IPFamilyIPv6})
	e.mesh(ctx)
	for _, n := range e.l.Nodes {
		if _, err := e.h[n.Index].LinkByName(wireguard.DeviceName); !netlinkx.IsNotFound(err) {
			t.Errorf("node %d: %s in an IPv6-only network in mode separate (%v)", n.Index, wireguard.DeviceName, err)
		}
		l, err := e.h[n.Index].LinkByName(wireguard.DeviceNameV6)
		if err != nil {
			t.Fatalf("node %d: %v", n.Index, err)
		}
		addrs, err := e.h[n.Index].AddrList(l, netlinkx.FamilyV6)
		if want := netip.PrefixFrom(n.Subnet6.Masked().Addr(), 128); err != nil || !slices.Contains(addrs, want) {
			t.Errorf("node %d: %s has %v (%v), want %s", n.Index, wireguard.DeviceNameV6, addrs, err, want)
		}
		node, err := e.cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ann := node.Annotations
		want6 := fmt.Sprintf(`{"PublicKey":%q,"Port":51821}`, readPublicKey(t, n.WGKeyFile()))
		if ann[e.keys.BackendType] != "wireguard" || ann[e.keys.BackendV6Data] != want6 || ann[e.keys.PublicIPv6] != n.PublicIPv6.String() {
			t.Errorf("node %d annotations: backend-type %q backend-v6-data %q public-ipv6 %q, want wireguard, %s and %s",
				n.Index, ann[e.keys.BackendType], ann[e.keys.BackendV6Data], ann[e.keys.PublicIPv6], want6, n.PublicIPv6)
		}
	}
	testStream6(t, ctx, e.env)
}
