package doctor

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/agentopts"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/masq"
	"github.com/weft-net/weft/internal/netif"
	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/subnetenv"
)

var (
	now     = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	mac1    = netlinkx.MAC{0xaa, 0, 0, 0, 0, 1}
	mac2    = netlinkx.MAC{0xaa, 0, 0, 0, 0, 2}
	mac3    = netlinkx.MAC{0xaa, 0, 0, 0, 0, 3}
	network = netip.MustParsePrefix("10.244.0.0/16")
	own     = netip.MustParsePrefix("10.244.1.0/24")
)

const (
	ulIdx  = 2
	devIdx = 5
	brIdx  = 6
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func vxlanValue(pub string, mac netlinkx.MAC) []byte {
	return fmt.Appendf(nil, `{"PublicIP":%q,"PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q}}`, pub, mac)
}

func iptablesListing(network, subnet netip.Prefix) []string {
	mr, _ := masq.IPTablesRules(network, subnet, true)
	out := []string{"-N " + masq.ChainPostrouting}
	for _, r := range mr.Rules {
		out = append(out, r.String())
	}
	return out
}

// healthy is a vxlan node 192.0.2.1 (10.244.1.0/24) with one peer,
// 192.0.2.2 (10.244.2.0/24), everything in place.
func healthy() Facts {
	opts := agentopts.Options{
		Etcd:        agentopts.Etcd{Endpoints: []string{"http://192.0.2.254:2379"}},
		EtcdPrefix:  agentopts.DefaultEtcdPrefix,
		SubnetFile:  "/run/flannel/subnet.env",
		HealthzIP:   "127.0.0.1",
		HealthzPort: 8471,
		RenewMargin: time.Hour,
	}
	opts.Iface.Ifaces = []string{"eth0"}
	return Facts{
		Now:     now,
		Options: opts,
		Store: StoreFacts{
			Endpoints:    []EndpointStatus{{Endpoint: "http://192.0.2.254:2379", Version: "3.7.3", MemberID: 0xb7, Leader: 0xb7}},
			ConfigSource: "/coreos.com/network/config",
			Config:       []byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`),
			LeasePrefix:  "/coreos.com/network/subnets/",
			Leases: []RawLease{
				{Key: "10.244.1.0-24", Value: vxlanValue("192.0.2.1", mac1), LeaseID: 0x11, TTL: 23 * time.Hour},
				{Key: "10.244.2.0-24", Value: vxlanValue("192.0.2.2", mac2), LeaseID: 0x12, TTL: 20 * time.Hour},
			},
		},
		Agent: AgentFacts{
			Procs: []Process{
				{PID: 100, SameNetNS: true, Args: []string{"/usr/bin/weftd", "--etcd-endpoints=http://192.0.2.254:2379", "--iface=eth0", "--healthz-ip=127.0.0.1", "--healthz-port=8471", "--ip-masq"}},
				{PID: 200, SameNetNS: false, Args: []string{"weftd"}},
			},
			Healthz:    &HTTPProbe{URL: "http://127.0.0.1:8471/healthz", Code: 200, Body: "ok\n"},
			Readyz:     &HTTPProbe{URL: "http://127.0.0.1:8471/readyz", Code: 200, Body: "ready\n"},
			MarkerPath: "/run/flannel/weftd.ready",
		},
		SubnetFile: SubnetFileFacts{
			Path: "/run/flannel/subnet.env",
			Env:  subnetenv.Env{Network: network, Subnet: pfx("10.244.1.1/24"), MTU: 1450, IPMasq: true},
		},
		Node: NodeFacts{
			Ext: netif.External{Name: "eth0", Index: ulIdx, MTU: 1500, Addr: addr("192.0.2.1"), PublicIP: addr("192.0.2.1"), Subnet: pfx("192.0.2.0/24")},
			Links: []Link{
				{Name: "lo", Index: 1, Kind: "device", MTU: 65536, Up: true, Addrs: []netip.Prefix{pfx("127.0.0.1/8")}},
				{Name: "eth0", Index: ulIdx, Kind: "veth", MTU: 1500, Up: true, Addrs: []netip.Prefix{pfx("192.0.2.1/24")}, GSOIPv4MaxSize: 65536},
				{Name: "flannel.1", Index: devIdx, Kind: "vxlan", MTU: 1450, Up: true, Addrs: []netip.Prefix{pfx("10.244.1.0/32"), pfx("fe80::1/64")}},
				{Name: "cni0", Index: brIdx, Kind: "bridge", MTU: 1450, Up: true, Addrs: []netip.Prefix{pfx("10.244.1.1/24")}},
			},
			Routes: []netlinkx.Route{
				{Dst: pfx("192.0.2.0/24"), LinkIndex: ulIdx},
				{Dst: pfx("10.244.1.0/24"), LinkIndex: brIdx},
				{Dst: pfx("10.244.2.0/24"), Gw: addr("10.244.2.0"), LinkIndex: devIdx, OnLink: true},
			},
			Neighs: []netlinkx.Neigh{{LinkIndex: devIdx, IP: addr("10.244.2.0"), MAC: mac2, State: netlinkx.NUDPermanent}},
			FDB:    []netlinkx.FDB{{LinkIndex: devIdx, MAC: mac2, Dst: addr("192.0.2.2")}},
			Sysctls: map[string]string{
				"net/ipv4/ip_forward":               "1",
				"net/ipv4/conf/all/rp_filter":       "0",
				"net/ipv4/conf/flannel.1/rp_filter": "0",
				"net/ipv4/conf/eth0/rp_filter":      "0",
				"net/core/rmem_max":                 "7340032",
				"net/core/wmem_max":                 "7340032",
			},
			Masq: MasqFacts{Checked: true, Tool: "iptables", ChainExists: true, Jump: true, Rules: iptablesListing(network, own)},
		},
	}
}

func find(r Report, check string) (Result, bool) {
	for _, x := range r.Results {
		if x.Check == check {
			return x, true
		}
	}
	return Result{}, false
}

// wantAllOK fails t unless r is every check of want, in that order, each ok.
func wantAllOK(t *testing.T, r Report, want []string) {
	t.Helper()
	var got []string
	for _, x := range r.Results {
		got = append(got, x.Check)
		if x.Status != OK {
			t.Errorf("%s: %s %s (hint %q, details %q)", x.Check, x.Status, x.Message, x.Hint, x.Details)
		}
	}
	if r.Failed() {
		t.Error("Failed() on a healthy node")
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("checks\n got %v\nwant %v", got, want)
	}
}

func TestHealthyNode(t *testing.T) {
	wantAllOK(t, Evaluate(healthy()), []string{"store", "config", "leases", "pool", "agent", "healthz", "readyz", "ready-marker",
		"subnet-file", "subnet-lease", "subnet-mtu", "subnet-gso", "underlay", "device", "routes", "neighbours", "fdb",
		"ip-forward", "rp-filter", "cni0", "masquerade"})
}

// evalCase is one fault made in a healthy node's facts: mutate makes it,
// check must then have status with every string of want in its message,
// hint or details, and each check in also its status.
type evalCase struct {
	name   string
	mutate func(f *Facts)
	check  string
	status Status
	want   []string
	also   map[string]Status
}

// runEvalCases evaluates each case over healthy() with its fault made.
func runEvalCases(t *testing.T, healthy func() Facts, tests []evalCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := healthy()
			tt.mutate(&f)
			r := Evaluate(f)
			got, ok := find(r, tt.check)
			if !ok {
				t.Fatalf("no %s result", tt.check)
			}
			text := strings.Join(append([]string{got.Message, got.Hint}, got.Details...), "\n")
			if got.Status != tt.status {
				t.Errorf("%s: status %s, want %s\n%s", tt.check, got.Status, tt.status, text)
			}
			for _, w := range tt.want {
				if !strings.Contains(text, w) {
					t.Errorf("%s: %q missing from\n%s", tt.check, w, text)
				}
			}
			if got.Status == OK && got.Hint != "" {
				t.Errorf("%s: ok with a hint %q", tt.check, got.Hint)
			}
			for check, st := range tt.also {
				if x, _ := find(r, check); x.Status != st {
					t.Errorf("%s: status %s, want %s (%s)", check, x.Status, st, x.Message)
				}
			}
			if r.Failed() != (r.Counts()[Fail] > 0) {
				t.Error("Failed() disagrees with the counts")
			}
		})
	}
}

func TestEvaluate(t *testing.T) {
	runEvalCases(t, healthy, []evalCase{
		{
			name: "etcd unreachable",
			mutate: func(f *Facts) {
				f.Store = StoreFacts{Endpoints: []EndpointStatus{{Endpoint: "http://192.0.2.254:2379", Err: errors.New("dial tcp 192.0.2.254:2379: connect: connection refused")}}}
			},
			check: "store", status: Fail,
			want: []string{"etcd at http://192.0.2.254:2379 unreachable: dial tcp 192.0.2.254:2379: connect: connection refused", "is the store up? check --etcd-endpoints"},
			also: map[string]Status{"config": Skip, "leases": Skip, "pool": Skip, "subnet-lease": Skip, "routes": Skip, "masquerade": OK},
		},
		{
			name: "one endpoint of two down",
			mutate: func(f *Facts) {
				f.Store.Endpoints = append(f.Store.Endpoints, EndpointStatus{Endpoint: "http://x:2379", Err: errors.New("i/o timeout")})
			},
			check: "store", status: Warn, want: []string{"1 endpoint unreachable", "http://x:2379: i/o timeout"},
		},
		{
			name:   "member alarm",
			mutate: func(f *Facts) { f.Store.Endpoints[0].Errors = []string{"memberID:183 alarm:NOSPACE"} },
			check:  "store", status: Fail, want: []string{"NOSPACE", "alarm list"},
		},
		{
			name:   "no leader",
			mutate: func(f *Facts) { f.Store.Endpoints[0].Leader = 0 },
			check:  "store", status: Fail, want: []string{"no leader"},
		},
		{
			name:   "client error",
			mutate: func(f *Facts) { f.Store = StoreFacts{Err: errors.New("etcd client TLS: open ca.pem: no such file")} },
			check:  "store", status: Fail, want: []string{"ca.pem", "--etcd-cafile"},
		},
		{
			name:   "no config",
			mutate: func(f *Facts) { f.Store.Config, f.Store.ConfigErr = nil, fmt.Errorf("x: %w", lease.ErrNoConfig) },
			check:  "config", status: Fail, want: []string{"no network config at /coreos.com/network/config", "etcdctl put"},
			also: map[string]Status{"pool": Skip, "device": Skip, "routes": Skip},
		},
		{
			name:   "invalid config",
			mutate: func(f *Facts) { f.Store.Config = []byte(`{"Network":"10.244.0.0/33"}`) },
			check:  "config", status: Fail, want: []string{"Network", "not a CIDR"},
		},
		{
			name:   "config warnings",
			mutate: func(f *Facts) { f.Store.Config = []byte(`{"Network":"10.244.0.0/16","Bakend":{"Type":"vxlan"}}`) },
			check:  "config", status: Warn, want: []string{`unknown key "Bakend" ignored`, `using "udp"`, "backend udp"},
		},
		{
			name: "garbage leases",
			mutate: func(f *Facts) {
				f.Store.Leases = append(f.Store.Leases,
					RawLease{Key: "10.244.3.1-24", Value: vxlanValue("192.0.2.3", mac3), LeaseID: 1, TTL: time.Hour},
					RawLease{Key: "10.244.4.0-24", Value: []byte("{not json"), LeaseID: 1, TTL: time.Hour})
			},
			check: "leases", status: Warn,
			want: []string{"4 leases", "2 unparsable", "10.244.3.1-24", "host bits", "10.244.4.0-24", "{not json"},
		},
		{
			name: "lease outside the network",
			mutate: func(f *Facts) {
				f.Store.Leases = append(f.Store.Leases, RawLease{Key: "10.99.3.0-24", Value: vxlanValue("192.0.2.3", mac3)})
			},
			check: "leases", status: Warn, want: []string{"1 reservation", "1 outside", "10.99.3.0-24 (192.0.2.3)"},
		},
		{
			name: "expired and expiring",
			mutate: func(f *Facts) {
				f.Store.Leases[1].TTL = 10 * time.Minute
				f.Store.Leases = append(f.Store.Leases, RawLease{Key: "10.244.3.0-24", Value: vxlanValue("192.0.2.3", mac3), LeaseID: 7, TTL: -time.Second})
			},
			check: "leases", status: Warn, want: []string{"1 expired", "1 expiring within 30m0s", "10.244.2.0-24 (192.0.2.2): expires in 10m0s"},
		},
		{
			name: "duplicate PublicIP",
			mutate: func(f *Facts) {
				f.Store.Leases = append(f.Store.Leases, RawLease{Key: "10.244.3.0-24", Value: vxlanValue("192.0.2.2", mac3), LeaseID: 7, TTL: 20 * time.Hour})
			},
			check: "leases", status: Warn, want: []string{"1 PublicIPs held by several leases", "192.0.2.2 holds 10.244.2.0-24, 10.244.3.0-24"},
		},
		{
			name:   "no leases",
			mutate: func(f *Facts) { f.Store.Leases = nil },
			check:  "leases", status: Warn, want: []string{"no agent has registered"},
			also: map[string]Status{"subnet-lease": Fail},
		},
		{
			name: "pool nearly full",
			mutate: func(f *Facts) {
				f.Store.Config = []byte(`{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.11.0","Backend":{"Type":"vxlan"}}`)
				for i := 3; i <= 10; i++ {
					f.Store.Leases = append(f.Store.Leases, RawLease{Key: fmt.Sprintf("10.244.%d.0-24", i), Value: vxlanValue(fmt.Sprintf("192.0.2.%d", i), netlinkx.MAC{0xaa, 1, 0, 0, 0, byte(i)})})
				}
			},
			check: "pool", status: Warn, want: []string{"ipv4: 1 of 11 subnets free", "under 10%"},
		},
		{
			name: "pool exhausted",
			mutate: func(f *Facts) {
				f.Store.Config = []byte(`{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0","Backend":{"Type":"vxlan"}}`)
			},
			check: "pool", status: Fail, want: []string{"0 of 2 subnets free", "exhausted"},
		},
		{
			name:   "no agent here",
			mutate: func(f *Facts) { f.Agent.Procs = f.Agent.Procs[1:] },
			check:  "agent", status: Fail, want: []string{"no weftd process in this network namespace", "1 weftd in other network namespaces: pid 200", "ip netns exec"},
			also: map[string]Status{"ready-marker": Warn},
		},
		{
			name:   "two agents",
			mutate: func(f *Facts) { f.Agent.Procs = append(f.Agent.Procs, Process{PID: 101, SameNetNS: true}) },
			check:  "agent", status: Warn, want: []string{"2 weftd processes", "100, 101", "stop all but one"},
		},
		{
			name: "agent runs with other settings",
			mutate: func(f *Facts) {
				f.Agent.Procs[0].Args = append(f.Agent.Procs[0].Args, "--subnet-file=/tmp/x y.env")
				f.Agent.Procs[0].Env = []string{"FLANNELD_ETCD_PREFIX=/weft"}
			},
			check: "agent", status: Warn,
			want: []string{`--subnet-file: weftd has "/tmp/x y.env", doctor "/run/flannel/subnet.env"`, `--etcd-prefix: weftd has "/weft"`, "run weft doctor without weftd's flags"},
		},
		{
			name:   "not ready",
			mutate: func(f *Facts) { f.Agent.Readyz.Code, f.Agent.Readyz.Body = 503, "not ready: no lease\n" },
			check:  "readyz", status: Fail, want: []string{"503 not ready: no lease", "see its log"},
		},
		{
			name:   "health server down",
			mutate: func(f *Facts) { f.Agent.Healthz.Err = errors.New("connection refused"); f.Agent.Healthz.Code = 0 },
			check:  "healthz", status: Fail, want: []string{"connection refused", "127.0.0.1:8471"},
		},
		{
			name:   "no health port",
			mutate: func(f *Facts) { f.Agent.Healthz, f.Agent.Readyz = nil, nil },
			check:  "readyz", status: Skip,
		},
		{
			name:   "stale marker",
			mutate: func(f *Facts) { f.Agent.MarkerErr = errors.New("/run/flannel/weftd.ready is stale") },
			check:  "ready-marker", status: Fail, want: []string{"stale", "STATUS"},
		},
		{
			name:   "subnet file missing",
			mutate: func(f *Facts) { f.SubnetFile.Err = fmt.Errorf("open: %w", fs.ErrNotExist) },
			check:  "subnet-file", status: Fail, want: []string{"/run/flannel/subnet.env not found", "--subnet-file"},
			also: map[string]Status{"subnet-lease": Skip, "subnet-mtu": Skip, "routes": Skip, "masquerade": Skip},
		},
		{
			name:   "subnet file network differs",
			mutate: func(f *Facts) { f.SubnetFile.Env.Network = pfx("10.0.0.0/8") },
			check:  "subnet-file", status: Fail, want: []string{"FLANNEL_NETWORK 10.0.0.0/8", "config's network is 10.244.0.0/16"},
		},
		{
			name: "subnet file stale",
			mutate: func(f *Facts) {
				f.SubnetFile.Env.Subnet = pfx("10.244.9.1/24")
			},
			check: "subnet-lease", status: Fail, want: []string{"no lease for 10.244.9.0/24", "this node (192.0.2.1) holds 10.244.1.0-24", "stale"},
		},
		{
			name:   "lease names another node",
			mutate: func(f *Facts) { f.Store.Leases[0].Value = vxlanValue("192.0.2.7", mac1) },
			check:  "subnet-lease", status: Fail, want: []string{"names 192.0.2.7, not this node's 192.0.2.1"},
		},
		{
			name:   "reservation",
			mutate: func(f *Facts) { f.Store.Leases[0].LeaseID = 0 },
			check:  "subnet-lease", status: OK, want: []string{"a reservation"},
		},
		{
			name:   "subnet MTU too big",
			mutate: func(f *Facts) { f.SubnetFile.Env.MTU = 1500 },
			check:  "subnet-mtu", status: Fail, want: []string{"FLANNEL_MTU 1500 exceeds flannel.1's MTU 1450", "restart weftd to rewrite the subnet file"},
		},
		{
			// The subnet file has what weftd gives the device: the device
			// is what changed, and the fix is its MTU, not the file.
			name:   "device MTU lowered by hand",
			mutate: func(f *Facts) { f.Node.Links[2].MTU = 1300 },
			check:  "subnet-mtu", status: Fail,
			want: []string{"FLANNEL_MTU 1450 exceeds flannel.1's MTU 1300", "the subnet file is right: flannel.1's MTU was changed from the 1450 weftd gives it (eth0 1500 − 50)",
				"ip link set flannel.1 mtu 1450"},
			also: map[string]Status{"device": Warn},
		},
		{
			name:   "device MTU lowered by hand: the device check",
			mutate: func(f *Facts) { f.Node.Links[2].MTU = 1300 },
			check:  "device", status: Warn, want: []string{"MTU 1300 is below 1450 (eth0 1500 − 50)", "ip link set flannel.1 mtu 1450"},
		},
		{
			name:   "device MTU raised by hand",
			mutate: func(f *Facts) { f.Node.Links[2].MTU = 1480 },
			check:  "subnet-mtu", status: Warn, want: []string{"FLANNEL_MTU 1450 is below flannel.1's MTU 1480", "ip link set flannel.1 mtu 1450"},
			also: map[string]Status{"device": Fail},
		},
		{
			name: "underlay by lease",
			mutate: func(f *Facts) {
				f.Node.Ext, f.Node.ExtErr = netif.External{}, errors.New("no IPv4 default route")
			},
			check: "underlay", status: Warn, want: []string{"no IPv4 default route", "took eth0", "192.0.2.1"},
			also: map[string]Status{"routes": OK, "subnet-lease": OK},
		},
		{
			name: "no underlay",
			mutate: func(f *Facts) {
				f.Node.Ext, f.Node.ExtErr = netif.External{}, errors.New("no IPv4 default route")
				f.Node.Links[1].Addrs = nil
			},
			check: "underlay", status: Fail, want: []string{"no underlay interface"},
			also: map[string]Status{"routes": Skip, "subnet-lease": Warn},
		},
		{
			name:   "device missing",
			mutate: func(f *Facts) { f.Node.Links = append(f.Node.Links[:2], f.Node.Links[3]) },
			check:  "device", status: Fail, want: []string{"flannel.1 not found"},
			also: map[string]Status{"routes": Skip, "subnet-mtu": Skip},
		},
		{
			name: "device down, wrong address and MTU",
			mutate: func(f *Facts) {
				d := &f.Node.Links[2]
				d.Up, d.Addrs, d.MTU = false, []netip.Prefix{pfx("10.244.7.0/32")}, 1500
				f.SubnetFile.Env.MTU = 1500
			},
			check: "device", status: Fail,
			want: []string{"is down", "lacks address 10.244.1.0/32 (has 10.244.7.0/32)", "MTU 1500 exceeds 1450 (eth0 1500 − 50)"},
		},
		{
			name: "route missing",
			mutate: func(f *Facts) {
				f.Node.Routes = f.Node.Routes[:2]
				f.Node.Sysctls["net/ipv4/conf/all/rp_filter"] = "1"
			},
			check: "routes", status: Fail,
			want: []string{"0 of 1 routes", "1 missing", "missing: 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"},
			also: map[string]Status{"rp-filter": Warn, "neighbours": OK},
		},
		{
			name:   "route differs",
			mutate: func(f *Facts) { f.Node.Routes[2].Gw = addr("10.244.2.9") },
			check:  "routes", status: Fail,
			want: []string{"1 differ", "differs: 10.244.2.0/24 via 10.244.2.9 dev flannel.1 onlink (want 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink)"},
		},
		{
			name: "extra route",
			mutate: func(f *Facts) {
				f.Node.Routes = append(f.Node.Routes, netlinkx.Route{Dst: pfx("10.244.3.0/24"), Gw: addr("10.244.3.0"), LinkIndex: devIdx, OnLink: true})
			},
			check: "routes", status: Warn, want: []string{"1 of 1", "1 extra", "extra: 10.244.3.0/24 via 10.244.3.0 dev flannel.1"},
		},
		{
			name: "lease not programmable",
			mutate: func(f *Facts) {
				f.Store.Leases = append(f.Store.Leases, RawLease{Key: "10.244.3.0-24", Value: []byte(`{"PublicIP":"192.0.2.3","PublicIPv6":null,"BackendType":"host-gw"}`), LeaseID: 3, TTL: 20 * time.Hour})
			},
			check: "routes", status: Warn, want: []string{"1 leases not programmable", `not programmed: lease 10.244.3.0/24: backend type "host-gw"`},
		},
		{
			name:   "neighbour missing",
			mutate: func(f *Facts) { f.Node.Neighs = nil },
			check:  "neighbours", status: Fail, want: []string{"0 of 1", "missing: 10.244.2.0 lladdr aa:00:00:00:00:02"},
		},
		{
			name:   "fdb points elsewhere",
			mutate: func(f *Facts) { f.Node.FDB[0].Dst = addr("192.0.2.9") },
			check:  "fdb", status: Fail, want: []string{"1 differ", "aa:00:00:00:00:02 dst 192.0.2.2"},
		},
		{
			name:   "no forwarding",
			mutate: func(f *Facts) { f.Node.Sysctls["net/ipv4/ip_forward"] = "0" },
			check:  "ip-forward", status: Fail, want: []string{"net.ipv4.ip_forward = 0", "sysctl -w net.ipv4.ip_forward=1"},
		},
		{
			name:   "strict rp_filter, routes fine",
			mutate: func(f *Facts) { f.Node.Sysctls["net/ipv4/conf/eth0/rp_filter"] = "1" },
			check:  "rp-filter", status: OK, want: []string{"eth0=1", "strict"},
		},
		{
			name:   "bridge MTU too big",
			mutate: func(f *Facts) { f.Node.Links[3].MTU = 1500 },
			check:  "cni0", status: Fail, want: []string{"MTU 1500 exceeds flannel.1's 1450"},
		},
		{
			name:   "bridge of an old subnet",
			mutate: func(f *Facts) { f.Node.Links[3].Addrs = []netip.Prefix{pfx("10.244.9.1/24")} },
			check:  "cni0", status: Fail, want: []string{"has 10.244.9.1/24, not 10.244.1.1/24", "ip link del cni0"},
		},
		{
			name:   "no bridge yet",
			mutate: func(f *Facts) { f.Node.Links = f.Node.Links[:3] },
			check:  "cni0", status: OK, want: []string{"no pod has started"},
		},
		{
			name:   "masquerade chain missing",
			mutate: func(f *Facts) { f.Node.Masq = MasqFacts{Checked: true, Tool: "iptables"} },
			check:  "masquerade", status: Fail, want: []string{"WEFT-POSTRTG is missing", "--ip-masq"},
		},
		{
			name:   "masquerade not jumped to",
			mutate: func(f *Facts) { f.Node.Masq.Jump = false },
			check:  "masquerade", status: Fail, want: []string{"POSTROUTING does not jump"},
		},
		{
			name:   "masquerade rules of another network",
			mutate: func(f *Facts) { f.Node.Masq.Rules = iptablesListing(pfx("10.99.0.0/16"), pfx("10.99.1.0/24")) },
			check:  "masquerade", status: Fail, want: []string{"lacks 5 rules for 10.244.0.0/16", "-s 10.244.0.0/16"},
		},
		{
			name: "masquerade without --random-fully",
			mutate: func(f *Facts) {
				mr, _ := masq.IPTablesRules(network, own, false)
				f.Node.Masq.Rules = nil
				for _, r := range mr.Rules {
					f.Node.Masq.Rules = append(f.Node.Masq.Rules, r.String())
				}
			},
			check: "masquerade", status: OK, want: []string{"6 rules"},
		},
		{
			name:   "masquerade off",
			mutate: func(f *Facts) { f.SubnetFile.Env.IPMasq = false; f.Node.Masq = MasqFacts{} },
			check:  "masquerade", status: OK, want: []string{"FLANNEL_IPMASQ=false"},
		},
		{
			name: "nftables masquerade",
			mutate: func(f *Facts) {
				post, _ := masq.NFTRules(masq.Config{Network: network, Subnet: own, Masquerade: true})
				m := MasqFacts{Checked: true, Tool: "nftables", TableExists: true}
				for _, r := range post {
					m.Comments = append(m.Comments, r.Comment)
				}
				f.Node.Masq = m
			},
			check: "masquerade", status: OK, want: []string{"table inet weft: 6 postrouting rules"},
		},
		{
			name: "nftables rule missing",
			mutate: func(f *Facts) {
				f.Node.Masq = MasqFacts{Checked: true, Tool: "nftables", TableExists: true, Comments: []string{"weft masq: kube-proxy marked"}}
			},
			check: "masquerade", status: Fail, want: []string{"lacks 5 rules", "masquerade fully-random"},
		},
	})
}

// healthyHostGW is healthy() as a host-gw node: no device, the route to
// the peer via its PublicIP on eth0, pods at the underlay's MTU.
func healthyHostGW() Facts {
	f := healthy()
	f.Store.Config = []byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`)
	f.Store.Leases[0].Value = []byte(`{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"host-gw"}`)
	f.Store.Leases[1].Value = []byte(`{"PublicIP":"192.0.2.2","PublicIPv6":null,"BackendType":"host-gw"}`)
	f.Node.Links = append(f.Node.Links[:2], f.Node.Links[3])
	f.Node.Links[2].MTU = 1500
	f.SubnetFile.Env.MTU = 1500
	f.Node.Routes[2] = netlinkx.Route{Dst: pfx("10.244.2.0/24"), Gw: addr("192.0.2.2"), LinkIndex: ulIdx}
	f.Node.Neighs, f.Node.FDB = nil, nil
	return f
}

// healthyUDP is healthy() as a udp node: flannel0 and the route to the
// whole network through it.
func healthyUDP() Facts {
	f := healthy()
	f.Store.Config = []byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`)
	f.Store.Leases[0].Value = []byte(`{"PublicIP":"192.0.2.1","PublicIPv6":null}`)
	f.Store.Leases[1].Value = []byte(`{"PublicIP":"192.0.2.2","PublicIPv6":null}`)
	f.Node.Links[2] = Link{Name: "flannel0", Index: devIdx, Kind: "tuntap", MTU: 1472, Up: true, Addrs: []netip.Prefix{pfx("10.244.1.0/32")}}
	f.Node.Links[3].MTU = 1472
	f.SubnetFile.Env.MTU = 1472
	f.Node.Routes[2] = netlinkx.Route{Dst: network, LinkIndex: devIdx}
	f.Node.Neighs, f.Node.FDB = nil, nil
	return f
}

func TestBackends(t *testing.T) {
	hostgwFacts, udpFacts := healthyHostGW, healthyUDP
	t.Run("host-gw healthy", func(t *testing.T) {
		r := Evaluate(hostgwFacts())
		for _, x := range r.Results {
			if x.Status != OK {
				t.Errorf("%s: %s %s %q", x.Check, x.Status, x.Message, x.Details)
			}
		}
		if _, ok := find(r, "fdb"); ok {
			t.Error("host-gw has no FDB check")
		}
		if x, _ := find(r, "device"); !strings.Contains(x.Message, "host-gw uses no device: routes go via eth0") {
			t.Error(x.Message)
		}
	})
	t.Run("host-gw BIG TCP", func(t *testing.T) {
		for _, tc := range []struct {
			underlay, env int
			status        Status
			want          string
		}{
			{196608, 196608, OK, "WEFT_GSO_IPV4_MAX_SIZE 196608 = eth0's gso_ipv4_max_size: pods get BIG TCP"},
			{196608, 0, Warn, "pods get 65536-byte GSO packets, below eth0's gso_ipv4_max_size (196608): BIG TCP unused"},
			{65536, 196608, Warn, "WEFT_GSO_IPV4_MAX_SIZE 196608 exceeds what eth0 takes (65536): the kernel splits pods' packets in software"},
			{65536, 0, OK, "pods keep the kernel's 64 KiB GSO limit: eth0 has no BIG TCP"},
		} {
			f := hostgwFacts()
			f.Node.Links[1].GSOIPv4MaxSize = tc.underlay
			f.SubnetFile.Env.GSOIPv4MaxSize = tc.env
			x, _ := find(Evaluate(f), "subnet-gso")
			if x.Status != tc.status || x.Message != tc.want {
				t.Errorf("underlay %d, subnet.env %d: %s %q, want %s %q", tc.underlay, tc.env, x.Status, x.Message, tc.status, tc.want)
			}
		}
	})
	t.Run("vxlan with BIG TCP in subnet.env", func(t *testing.T) {
		f := healthy()
		f.SubnetFile.Env.GSOIPv4MaxSize = 196608
		x, _ := find(Evaluate(f), "subnet-gso")
		if x.Status != Fail || !strings.Contains(x.Message, "BIG TCP does not cross the vxlan tunnel") {
			t.Errorf("%s %q", x.Status, x.Message)
		}
	})
	t.Run("host-gw route missing", func(t *testing.T) {
		f := hostgwFacts()
		f.Node.Routes = f.Node.Routes[:2]
		x, _ := find(Evaluate(f), "routes")
		if x.Status != Fail || !strings.Contains(strings.Join(x.Details, "\n"), "missing: 10.244.2.0/24 via 192.0.2.2 dev eth0") {
			t.Errorf("%s %s %q", x.Status, x.Message, x.Details)
		}
	})
	t.Run("udp healthy", func(t *testing.T) {
		r := Evaluate(udpFacts())
		for _, x := range r.Results {
			if x.Status != OK {
				t.Errorf("%s: %s %s %q", x.Check, x.Status, x.Message, x.Details)
			}
		}
		if x, _ := find(r, "device"); !strings.Contains(x.Message, "MTU 1472 (eth0 1500 − 28)") {
			t.Error(x.Message)
		}
	})
	t.Run("udp route missing", func(t *testing.T) {
		f := udpFacts()
		f.Node.Routes = f.Node.Routes[:2]
		x, _ := find(Evaluate(f), "routes")
		if x.Status != Fail || !strings.Contains(x.Message, "missing route 10.244.0.0/16 dev flannel0") {
			t.Errorf("%s %s", x.Status, x.Message)
		}
	})
}

func TestOutput(t *testing.T) {
	f := healthy()
	f.Node.Routes = f.Node.Routes[:2]
	r := Evaluate(f)
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	out := text.String()
	for _, w := range []string{
		"ok    store         etcd http://192.0.2.254:2379 v3.7.3, member b7, leader b7\n",
		"FAIL  routes        0 of 1 routes to remote subnets present: 1 missing: weftd repairs routes",
		"\n                      missing: 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink\n",
		"20 ok, 0 warn, 1 FAIL, 0 skipped\n",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("text output lacks %q:\n%s", w, out)
		}
	}

	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var got struct {
		OK      bool
		Results []struct {
			Check, Status, Message, Hint string
			Details                      []string
		}
	}
	if err := json.Unmarshal(js.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, js.String())
	}
	if got.OK || len(got.Results) != len(r.Results) {
		t.Fatalf("ok %v, %d results", got.OK, len(got.Results))
	}
	for _, x := range got.Results {
		if x.Check == "routes" && (x.Status != "fail" || len(x.Details) != 1 || x.Hint == "") {
			t.Errorf("routes in JSON: %+v", x)
		}
		if x.Check == "store" && x.Status != "ok" {
			t.Errorf("store in JSON: %+v", x)
		}
	}
}
