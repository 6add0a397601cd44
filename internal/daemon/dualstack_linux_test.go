package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/agentopts"
	"github.com/weft-net/weft/internal/etcdtest"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netif"
	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/netlinkx/nstest"
	"github.com/weft-net/weft/internal/subnetenv"
)

const dualConf = `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`

// TestDaemonDualStack: with EnableIPv6 weftd chooses an interface with both
// families, leases both subnets under flannel's dual key, publishes
// PublicIPv6 and flannel-v6.1's MAC as BackendV6Data, writes both families
// to subnet.env and routes a dual-stack peer over flannel-v6.1 too.
func TestDaemonDualStack(t *testing.T) {
	nstest.RequireRoot(t)
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	ctx := context.Background()

	hostNS, peerNS := nstest.New(t), nstest.New(t)
	for _, n := range []*nstest.NS{hostNS, peerNS} {
		n.Sysctl(t, "net/ipv6/conf/default/accept_dad", "0")
	}
	nstest.Veth(t, hostNS, "ext0", netip.MustParsePrefix("192.0.2.10/24"), peerNS, "p0", netip.MustParsePrefix("192.0.2.1/24"))
	if err := hostNS.H.AddrReplace(hostNS.Link(t, "ext0"), netip.MustParsePrefix("2001:db8::10/64")); err != nil {
		t.Fatal(err)
	}
	// A second interface with IPv4 only: the regex matches it first, but
	// dual stack needs an interface with a matching address of each family.
	nstest.Veth(t, hostNS, "aaa0", netip.MustParsePrefix("192.0.2.77/32"), nstest.New(t), "x0", netip.Prefix{})

	dir := t.TempDir()
	subnetFile := filepath.Join(dir, "subnet.env")
	n := newNode(t, hostNS, agentopts.Options{
		Etcd:         agentopts.Etcd{Endpoints: []string{etcd.Endpoint}},
		EtcdPrefix:   prefix,
		Iface:        netif.Spec{Regexes: []string{`^192\.0\.2\.|^2001:db8::`}},
		SubnetFile:   subnetFile,
		ResyncPeriod: time.Second,
		ConfigRetry:  100 * time.Millisecond,
	})
	logs := n.logs
	if _, err := cli.Put(ctx, prefix+"/config", dualConf); err != nil {
		t.Fatal(err)
	}
	n.start()
	var env subnetenv.Env
	waitFor(t, "subnet.env with both families", 15*time.Second, func() bool {
		var err error
		env, err = subnetenv.Read(subnetFile)
		return err == nil && env.IPv6Subnet.IsValid()
	})
	own4, own6 := env.Subnet.Masked(), env.IPv6Subnet.Masked()
	if env.Network.String() != "10.244.0.0/16" || env.IPv6Network.String() != "fd00:10:244::/56" || own6.Bits() != 64 ||
		env.IPv6Subnet.Addr() != own6.Addr().Next() || env.MTU != 1450 {
		t.Errorf("subnet.env: %+v", env)
	}
	if !strings.Contains(logs.String(), `stack="dual stack"`) || !strings.Contains(logs.String(), "iface=ext0") {
		t.Errorf("interface choice not logged as dual stack on ext0")
	}

	key := prefix + "/subnets/" + lease.Key(own4, own6)
	if !strings.Contains(key, "&fd00:10:244:") {
		t.Fatalf("key %s is not flannel's dual key", key)
	}
	resp, err := cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("own lease %s in etcd: %v %v", key, resp, err)
	}
	attrs, err := lease.UnmarshalAttrs(resp.Kvs[0].Value)
	if err != nil || attrs.PublicIP != netip.MustParseAddr("192.0.2.10") || attrs.PublicIPv6 == nil ||
		*attrs.PublicIPv6 != netip.MustParseAddr("2001:db8::10") {
		t.Fatalf("own lease value %s: %v", resp.Kvs[0].Value, err)
	}
	var v6data struct {
		VNI     int
		VtepMAC string
	}
	dev6 := hostNS.Link(t, "flannel-v6.1")
	if err := json.Unmarshal(attrs.BackendV6Data, &v6data); err != nil || v6data.VNI != 1 || v6data.VtepMAC != dev6.Attrs().HardwareAddr.String() {
		t.Errorf("BackendV6Data %s, flannel-v6.1 has MAC %s", attrs.BackendV6Data, dev6.Attrs().HardwareAddr)
	}

	// A dual-stack flannel node appears: routes on both devices.
	remote4, remote6 := netip.MustParsePrefix("10.244.7.0/24"), netip.MustParsePrefix("fd00:10:244:7::/64")
	if remote4 == own4 {
		remote4, remote6 = netip.MustParsePrefix("10.244.8.0/24"), netip.MustParsePrefix("fd00:10:244:8::/64")
	}
	remoteKey := prefix + "/subnets/" + lease.Key(remote4, remote6)
	val := `{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:46"}}`
	if _, err := cli.Put(ctx, remoteKey, val); err != nil {
		t.Fatal(err)
	}
	hasRoute6 := func() bool {
		l, err := hostNS.H.LinkByName("flannel-v6.1")
		if err != nil {
			return false
		}
		rs, _ := hostNS.H.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV6, LinkIndex: l.Attrs().Index})
		for _, r := range rs {
			if r.Dst == remote6 && r.Gw == remote6.Addr() && r.OnLink {
				return true
			}
		}
		return false
	}
	waitFor(t, "IPv6 route to the dual-stack peer", 5*time.Second, hasRoute6)

	// Deleted flannel-v6.1: the next resync makes it again, with its MAC.
	if err := hostNS.H.LinkDel(dev6); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "flannel-v6.1 and its route back", 10*time.Second, hasRoute6)
	if again := hostNS.Link(t, "flannel-v6.1"); again.Attrs().HardwareAddr.String() != v6data.VtepMAC {
		t.Errorf("recreated flannel-v6.1 has MAC %s, published %s", again.Attrs().HardwareAddr, v6data.VtepMAC)
	}
	if err := n.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestDaemonDualStackNeedsBothFamilies: an interface without IPv6 cannot
// carry a dual-stack network; weftd says which and stops.
func TestDaemonDualStackNeedsBothFamilies(t *testing.T) {
	nstest.RequireRoot(t)
	etcd := etcdtest.Start(t)
	hostNS, peerNS := nstest.New(t), nstest.New(t)
	// No IPv6 at all on ext0: a link-local address would do for flannel's
	// choice (and so for weft's).
	hostNS.Sysctl(t, "net/ipv6/conf/default/disable_ipv6", "1")
	nstest.Veth(t, hostNS, "ext0", netip.MustParsePrefix("192.0.2.10/24"), peerNS, "p0", netip.MustParsePrefix("192.0.2.1/24"))
	dir := t.TempDir()
	confPath := filepath.Join(dir, "net-conf.json")
	if err := os.WriteFile(confPath, []byte(dualConf), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := Run(ctx, Options{
		Options: agentopts.Options{
			Etcd:          agentopts.Etcd{Endpoints: []string{etcd.Endpoint}},
			Iface:         netif.Spec{Ifaces: []string{"ext0"}},
			SubnetFile:    filepath.Join(dir, "subnet.env"),
			NetConfigFile: confPath,
		},
		Logger:  slog.New(slog.NewTextHandler(logs, nil)),
		Netlink: hostNS.H,
	})
	if err == nil || !strings.Contains(err.Error(), "ext0") || !strings.Contains(err.Error(), "IPv6") || !strings.Contains(err.Error(), "dual stack") {
		t.Fatalf("Run = %v, want an error naming ext0, IPv6 and dual stack; log:\n%s", err, logs.String())
	}
}

// TestDaemonIPv6PoolExhausted: the IPv4 pool has room but the only IPv6
// subnet is reserved: weftd says the IPv6 range is full, naming its keys
// and bounds, on /readyz too, and keeps running.
func TestDaemonIPv6PoolExhausted(t *testing.T) {
	nstest.RequireRoot(t)
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	ctx := context.Background()
	if _, err := cli.Put(ctx, prefix+"/subnets/10.60.0.4-30&fd00:60:0:1::-64", `{"PublicIP":"192.0.2.21","PublicIPv6":"2001:db8::21","BackendType":"host-gw"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, prefix+"/config", `{"Network":"10.60.0.0/28","EnableIPv6":true,"IPv6Network":"fd00:60::/56",`+
		`"IPv6SubnetMin":"fd00:60:0:1::","IPv6SubnetMax":"fd00:60:0:1::","Backend":{"Type":"host-gw"}}`); err != nil {
		t.Fatal(err)
	}
	hostNS, peerNS := nstest.New(t), nstest.New(t)
	hostNS.Sysctl(t, "net/ipv6/conf/default/accept_dad", "0")
	nstest.Veth(t, hostNS, "ext0", netip.MustParsePrefix("192.0.2.10/24"), peerNS, "p0", netip.MustParsePrefix("192.0.2.1/24"))
	if err := hostNS.H.AddrReplace(hostNS.Link(t, "ext0"), netip.MustParsePrefix("2001:db8::10/64")); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	n := newNode(t, hostNS, agentopts.Options{
		Etcd:        agentopts.Etcd{Endpoints: []string{etcd.Endpoint}},
		EtcdPrefix:  prefix,
		Iface:       netif.Spec{Ifaces: []string{"ext0"}},
		SubnetFile:  filepath.Join(t.TempDir(), "subnet.env"),
		HealthzIP:   "127.0.0.1",
		HealthzPort: port,
	})
	logs := n.logs
	n.start()
	waitFor(t, "/readyz to report the exhausted IPv6 pool", 5*time.Second, func() bool {
		code, body := httpGet(fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
		return code == 503 && strings.Contains(body, "subnet pool exhausted") && strings.Contains(body, "IPv6 pool")
	})
	var line string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "the subnet pool is exhausted") {
			line = l
			break
		}
	}
	for _, want := range []string{"IPv6 pool fd00:60:0:1::/64 to fd00:60:0:1::/64", "IPv6SubnetMin to IPv6SubnetMax",
		"ipv6_subnet_min=fd00:60:0:1::", "ipv6_subnet_max=fd00:60:0:1::"} {
		if !strings.Contains(line, want) {
			t.Errorf("log line %q does not contain %q", line, want)
		}
	}
	if err := n.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestDaemonIPv6OnlyNeedsKube: with the etcd store an IPv6-only config is
// a config error naming EnableIPv4 (flannel nodes cannot read such keys);
// weftd waits for a corrected one and writes no lease.
func TestDaemonIPv6OnlyNeedsKube(t *testing.T) {
	nstest.RequireRoot(t)
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	hostNS, peerNS := nstest.New(t), nstest.New(t)
	hostNS.Sysctl(t, "net/ipv6/conf/default/accept_dad", "0")
	nstest.Veth(t, hostNS, "ext0", netip.MustParsePrefix("192.0.2.10/24"), peerNS, "p0", netip.MustParsePrefix("192.0.2.1/24"))
	if err := hostNS.H.AddrReplace(hostNS.Link(t, "ext0"), netip.MustParsePrefix("2001:db8::10/64")); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	confPath := filepath.Join(dir, "net-conf.json")
	if err := os.WriteFile(confPath, []byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	n := newNode(t, hostNS, agentopts.Options{
		Etcd:          agentopts.Etcd{Endpoints: []string{etcd.Endpoint}},
		Iface:         netif.Spec{Ifaces: []string{"ext0"}},
		SubnetFile:    filepath.Join(dir, "subnet.env"),
		NetConfigFile: confPath,
		ConfigRetry:   100 * time.Millisecond,
	})
	logs := n.logs
	n.start()
	waitFor(t, "the config error", 10*time.Second, func() bool {
		return strings.Contains(logs.String(), "network config unusable") && strings.Contains(logs.String(), "EnableIPv4 false") &&
			strings.Contains(logs.String(), "kube-subnet-mgr")
	})
	if err := n.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	resp, err := cli.Get(context.Background(), prefix+"/subnets/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Errorf("leases written: %v, %v", resp, err)
	}
}
