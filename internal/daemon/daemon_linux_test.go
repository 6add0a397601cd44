package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/agentopts"
	"github.com/weft-net/weft/internal/etcdtest"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netif"
	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/netlinkx/nstest"
	"github.com/weft-net/weft/internal/readyfile"
	"github.com/weft-net/weft/internal/subnetenv"
)

// syncBuffer collects log output from the daemon's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitFor(t *testing.T, what string, timeout time.Duration, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(25 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatalf("timed out after %s waiting for %s", timeout, what)
}

func httpGet(url string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// node is one weftd run in a test namespace.
type node struct {
	t      *testing.T
	ns     *nstest.NS
	opts   Options
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

func (n *node) start() {
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done = cancel, make(chan error, 1)
	go func() { n.done <- Run(ctx, n.opts) }()
}

func (n *node) stop() error {
	n.cancel()
	select {
	case err := <-n.done:
		return err
	case <-time.After(10 * time.Second):
		n.t.Fatal("Run did not return within 10s of cancel")
		return nil
	}
}

const (
	prefix   = "/coreos.com/network"
	goodConf = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`
	badConf  = `{"Network":"10.244.0.0/33","Backend":{"Type":"vxlan"}}`
)

// TestDaemon runs weftd in-process against a real etcd with the real vxlan
// backend programming a test namespace.
func TestDaemon(t *testing.T) {
	nstest.RequireRoot(t)
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	ctx := context.Background()
	put := func(k, v string) {
		t.Helper()
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}

	hostNS, peerNS := nstest.New(t), nstest.New(t)
	nstest.Veth(t, hostNS, "ext0", netip.MustParsePrefix("192.0.2.10/24"), peerNS, "p0", netip.MustParsePrefix("192.0.2.1/24"))
	subnetFile := filepath.Join(t.TempDir(), "subnet.env")
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	n := newNode(t, hostNS, agentopts.Options{
		Etcd:         agentopts.Etcd{Endpoints: []string{etcd.Endpoint}},
		EtcdPrefix:   prefix,
		LeaseTTL:     3 * time.Second, // renewed at half-life: the margin (1h) exceeds it
		Iface:        netif.Spec{Ifaces: []string{"ext0"}},
		SubnetFile:   subnetFile,
		HealthzIP:    "127.0.0.1",
		HealthzPort:  port,
		ResyncPeriod: time.Second,
		ConfigRetry:  100 * time.Millisecond,
	})
	n.opts.Version = "test"
	logs := n.logs

	// A garbage lease and a bad config: weftd waits, says why, and does not exit.
	put(prefix+"/subnets/10.244.99.0-24", "not json at all")
	put(prefix+"/config", badConf)
	n.start()
	waitFor(t, "/readyz to name the config error", 5*time.Second, func() bool {
		code, body := httpGet(base + "/readyz")
		return code == 503 && strings.Contains(body, "Network") && strings.Contains(body, "10.244.0.0/33")
	})
	if err := readyfile.Check(readyfile.Path(subnetFile), time.Now()); err == nil {
		t.Error("readiness marker vouches for a node waiting for its config")
	}
	if code, _ := httpGet(base + "/healthz"); code != 200 {
		t.Errorf("/healthz while waiting for config: %d", code)
	}
	if !strings.Contains(logs.String(), "network config unusable; waiting for a corrected one") {
		t.Errorf("config error not logged:\n%s", logs.String())
	}

	// The corrected config is picked up.
	put(prefix+"/config", goodConf)
	waitFor(t, "/readyz 200", 10*time.Second, func() bool { code, _ := httpGet(base + "/readyz"); return code == 200 })
	// The CNI plugin's STATUS reads the same readiness from disk.
	if err := readyfile.Check(readyfile.Path(subnetFile), time.Now()); err != nil {
		t.Errorf("readiness marker once ready: %v", err)
	}

	env, err := subnetenv.Read(subnetFile)
	if err != nil {
		t.Fatal(err)
	}
	own := env.Subnet.Masked()
	if env.Network.String() != "10.244.0.0/16" || own.Bits() != 24 || env.Subnet.Addr() != own.Addr().Next() || env.MTU != 1450 || env.IPMasq {
		t.Errorf("subnet.env: %+v", env)
	}
	resp, err := cli.Get(ctx, prefix+"/subnets/"+lease.Key(own, netip.Prefix{}))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("own lease in etcd: %v %v", resp, err)
	}
	attrs, err := lease.UnmarshalAttrs(resp.Kvs[0].Value)
	if err != nil || attrs.PublicIP != netip.MustParseAddr("192.0.2.10") || attrs.BackendType != "vxlan" {
		t.Errorf("own lease value %s: %v", resp.Kvs[0].Value, err)
	}
	logText := logs.String()
	for _, want := range []string{
		fmt.Sprintf("subnet %s (new)", own),
		"using interface",
		"programmed 1 leases in",
		"ignoring bad lease",
	} {
		if !strings.Contains(logText, want) {
			t.Errorf("log lacks %q", want)
		}
	}

	// Another node appears: its route appears; it goes: the route goes.
	remote := netip.MustParsePrefix("10.244.7.0/24")
	if remote == own {
		remote = netip.MustParsePrefix("10.244.8.0/24")
	}
	remoteKey := prefix + "/subnets/" + lease.Key(remote, netip.Prefix{})
	put(remoteKey, `{"PublicIP":"192.0.2.20","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`)
	hasRoute := func() bool {
		link, err := hostNS.H.LinkByName("flannel.1")
		if err != nil {
			return false
		}
		rs, _ := hostNS.H.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4, LinkIndex: link.Attrs().Index})
		for _, r := range rs {
			if r.Dst == remote && r.Gw == remote.Addr() && r.OnLink {
				return true
			}
		}
		return false
	}
	waitFor(t, "route to the new lease", 5*time.Second, hasRoute)
	if _, err := cli.Delete(ctx, remoteKey); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "route of the removed lease to go", 5*time.Second, func() bool { return !hasRoute() })

	// A route removed behind weftd's back is back by the next full resync.
	put(remoteKey, `{"PublicIP":"192.0.2.20","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`)
	waitFor(t, "route to the re-added lease", 5*time.Second, hasRoute)
	link := hostNS.Link(t, "flannel.1")
	if err := hostNS.H.RouteDel(netlinkx.Route{Dst: remote, Gw: remote.Addr(), LinkIndex: link.Attrs().Index, OnLink: true}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "resync to repair the route", 5*time.Second, hasRoute)

	// Our lease deleted: weftd takes the same subnet again.
	ownKey := prefix + "/subnets/" + lease.Key(own, netip.Prefix{})
	if _, err := cli.Delete(ctx, ownKey); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "own lease re-acquired", 5*time.Second, func() bool {
		r, err := cli.Get(ctx, ownKey)
		return err == nil && len(r.Kvs) == 1
	})

	// Metrics. The lease gauge follows the watch, which reports the
	// re-acquired lease a moment after the store has it.
	waitFor(t, "weft_leases back at 2", 5*time.Second, func() bool {
		_, m := httpGet(base + "/metrics")
		return strings.Contains(m, "\nweft_leases 2\n")
	})
	code, metrics := httpGet(base + "/metrics")
	for _, want := range []string{
		`weft_info{backend="vxlan",version="test"} 1`,
		"weft_leases 2",
		`weft_reconcile_duration_seconds_count{mode="full"}`,
		`weft_reconcile_errors_total{mode="incremental"} 0`,
		"weft_config_errors_total",
		"weft_lease_expiration_timestamp_seconds",
		"weft_last_reconcile_success_timestamp_seconds",
	} {
		if code != 200 || !strings.Contains(metrics, want) {
			t.Errorf("/metrics (%d) lacks %q", code, want)
		}
	}
	if m := regexp.MustCompile(`weft_config_errors_total (\d+)`).FindStringSubmatch(metrics); m == nil || m[1] == "0" {
		t.Errorf("config errors not counted: %v", m)
	}

	// The lease outlives its 3 s TTL: it is renewed.
	time.Sleep(3500 * time.Millisecond)
	if r, err := cli.Get(ctx, ownKey); err != nil || len(r.Kvs) != 1 {
		t.Errorf("own lease gone after its TTL: renewal failed (%v)", err)
	}
	if !strings.Contains(logs.String(), "lease renewed") {
		t.Error("no renewal logged")
	}
	// The periodic passes read the kernel off the event loop.
	if !regexp.MustCompile(`msg=reconciled mode=full leases=2 .* read_ahead=true`).MatchString(logs.String()) {
		t.Error("no full pass read the kernel ahead")
	}

	// Stop: Run returns nil; the datapath stays.
	if err := n.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !hasRoute() {
		t.Error("route removed on exit; the datapath must stay")
	}

	// Restart: the same subnet, reused.
	logs2 := &syncBuffer{}
	n.opts.Logger = slog.New(slog.NewTextHandler(logs2, nil))
	n.opts.HealthzPort = 0
	n.start()
	waitFor(t, "restart to program its leases", 10*time.Second, func() bool { return strings.Contains(logs2.String(), "programmed 2 leases in") })
	if !strings.Contains(logs2.String(), fmt.Sprintf("subnet %s (reused)", own)) {
		t.Errorf("restart did not reuse %s:\n%s", own, logs2.String())
	}
	if err := n.stop(); err != nil {
		t.Fatalf("Run after restart: %v", err)
	}
}

// TestDaemonConfigFromFile reads the config from --net-config-file, waits
// while the file is missing, and uses host-gw.
func TestDaemonConfigFromFile(t *testing.T) {
	nstest.RequireRoot(t)
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	hostNS, peerNS := nstest.New(t), nstest.New(t)
	nstest.Veth(t, hostNS, "ext0", netip.MustParsePrefix("192.0.2.10/24"), peerNS, "p0", netip.MustParsePrefix("192.0.2.1/24"))
	dir := t.TempDir()
	confPath := filepath.Join(dir, "net-conf.json")
	n := newNode(t, hostNS, agentopts.Options{
		Etcd:          agentopts.Etcd{Endpoints: []string{etcd.Endpoint}},
		Iface:         netif.Spec{Regexes: []string{`^192\.0\.2\.`}},
		SubnetFile:    filepath.Join(dir, "subnet.env"),
		NetConfigFile: confPath,
		ConfigRetry:   50 * time.Millisecond,
	})
	logs := n.logs
	n.start()
	waitFor(t, "missing file reported", 5*time.Second, func() bool { return strings.Contains(logs.String(), "no network config yet") })
	if err := os.WriteFile(confPath, []byte(`{"Network":"10.50.0.0/16","SubnetLen":26,"Backend":{"Type":"host-gw"},"Bogus":1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "programmed", 10*time.Second, func() bool { return strings.Contains(logs.String(), "programmed 1 leases in") })
	if !strings.Contains(logs.String(), `unknown key \"Bogus\" ignored`) {
		t.Error("config warning not logged")
	}
	env, err := subnetenv.Read(n.opts.SubnetFile)
	if err != nil || env.Subnet.Bits() != 26 || env.MTU != 1500 {
		t.Errorf("subnet.env %+v %v", env, err)
	}
	// Without --ip-blackhole-route, no blackhole route.
	if bh, err := hostNS.H.BlackholeList(netlinkx.FamilyAll); err != nil || len(bh) != 0 {
		t.Errorf("blackhole routes without --ip-blackhole-route: %v %v", bh, err)
	}
	// A remote lease on the underlay's segment gets a host-gw route.
	remote := netip.MustParsePrefix("10.50.3.0/26")
	if remote == env.Subnet.Masked() {
		remote = netip.MustParsePrefix("10.50.4.0/26")
	}
	if _, err := cli.Put(context.Background(), prefix+"/subnets/"+lease.Key(remote, netip.Prefix{}),
		`{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"host-gw"}`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "host-gw route", 5*time.Second, func() bool {
		rs, _ := hostNS.H.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4})
		for _, r := range rs {
			if r.Dst == remote && r.Gw == netip.MustParseAddr("192.0.2.1") {
				return true
			}
		}
		return false
	})
	if err := n.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestDaemonBlackhole runs weftd with --ip-blackhole-route: the blackhole
// route for its subnet appears, and comes back within one
// --iptables-resync after it is deleted.
func TestDaemonBlackhole(t *testing.T) {
	nstest.RequireRoot(t)
	etcd := etcdtest.Start(t)
	hostNS, peerNS := nstest.New(t), nstest.New(t)
	nstest.Veth(t, hostNS, "ext0", netip.MustParsePrefix("192.0.2.10/24"), peerNS, "p0", netip.MustParsePrefix("192.0.2.1/24"))
	dir := t.TempDir()
	confPath := filepath.Join(dir, "net-conf.json")
	if err := os.WriteFile(confPath, []byte(`{"Network":"10.70.0.0/16","Backend":{"Type":"host-gw"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	const resync = 500 * time.Millisecond
	n := newNode(t, hostNS, agentopts.Options{
		Etcd:           agentopts.Etcd{Endpoints: []string{etcd.Endpoint}},
		Iface:          netif.Spec{Ifaces: []string{"ext0"}},
		SubnetFile:     filepath.Join(dir, "subnet.env"),
		NetConfigFile:  confPath,
		BlackholeRoute: true,
		IPTablesResync: resync,
	})
	logs := n.logs
	n.start()
	waitFor(t, "programmed", 20*time.Second, func() bool { return strings.Contains(logs.String(), "programmed 1 leases in") })
	env, err := subnetenv.Read(n.opts.SubnetFile)
	if err != nil {
		t.Fatal(err)
	}
	own := env.Subnet.Masked()
	hasOwn := func() bool {
		bh, err := hostNS.H.BlackholeList(netlinkx.FamilyAll)
		return err == nil && len(bh) == 1 && bh[0] == own
	}
	waitFor(t, "the blackhole route for "+own.String(), 5*time.Second, hasOwn)
	if out, err := hostNS.Exec("ip", "route", "del", "blackhole", own.String()); err != nil {
		t.Fatalf("ip route del blackhole: %v %s", err, out)
	}
	deleted := time.Now()
	waitFor(t, "the blackhole route back", 5*time.Second, hasOwn)
	if took := time.Since(deleted); took > resync+time.Second {
		t.Errorf("blackhole back after %s, want within one --iptables-resync (%s) and slack", took, resync)
	}
	if err := n.stop(); err != nil {
		t.Fatal(err)
	}
	// It stays on exit, with the rest of the datapath.
	if !hasOwn() {
		t.Error("blackhole route removed on exit")
	}
}

// TestDaemonPoolExhausted: every subnet is reserved by other nodes; weftd
// says so clearly, on /readyz too, and keeps running.
func TestDaemonPoolExhausted(t *testing.T) {
	nstest.RequireRoot(t)
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	ctx := context.Background()
	// A /28 splits into /30s; the pool is the 2nd to the 4th.
	for i, sn := range []string{"10.60.0.4-30", "10.60.0.8-30", "10.60.0.12-30"} {
		v := fmt.Sprintf(`{"PublicIP":"192.0.2.%d","PublicIPv6":null,"BackendType":"host-gw"}`, 21+i)
		if _, err := cli.Put(ctx, prefix+"/subnets/"+sn, v); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Put(ctx, prefix+"/config", `{"Network":"10.60.0.0/28","Backend":{"Type":"host-gw"}}`); err != nil {
		t.Fatal(err)
	}
	hostNS, peerNS := nstest.New(t), nstest.New(t)
	nstest.Veth(t, hostNS, "ext0", netip.MustParsePrefix("192.0.2.10/24"), peerNS, "p0", netip.MustParsePrefix("192.0.2.1/24"))
	port := freePort(t)
	n := newNode(t, hostNS, agentopts.Options{
		Etcd:        agentopts.Etcd{Endpoints: []string{etcd.Endpoint}},
		Iface:       netif.Spec{Ifaces: []string{"192.0.2.10"}},
		SubnetFile:  filepath.Join(t.TempDir(), "subnet.env"),
		HealthzIP:   "127.0.0.1",
		HealthzPort: port,
	})
	logs := n.logs
	n.start()
	waitFor(t, "/readyz to report the exhausted pool", 5*time.Second, func() bool {
		code, body := httpGet(fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
		return code == 503 && strings.Contains(body, "subnet pool exhausted")
	})
	if !strings.Contains(logs.String(), "the subnet pool is exhausted") {
		t.Errorf("no clear log line:\n%s", logs.String())
	}
	if err := n.stop(); err != nil {
		t.Fatal(err)
	}
}

// newNode is weftd with ao in ns, logging at debug level into n.logs,
// which the test prints when it fails (or WEFT_TEST_LOGS is set).
func newNode(t *testing.T, ns *nstest.NS, ao agentopts.Options) *node {
	t.Helper()
	logs := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("WEFT_TEST_LOGS") != "" {
			t.Logf("weftd log:\n%s", logs.String())
		}
	})
	return &node{t: t, ns: ns, logs: logs, opts: Options{
		Options: ao,
		Logger:  slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Netlink: ns.H,
	}}
}
