package lab

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/weft-net/weft/internal/cni"
	"github.com/weft-net/weft/internal/subnetenv"
)

func TestPlan(t *testing.T) {
	o, err := Options{Name: "weft-abc123", Root: "/tmp/x", Nodes: 2, PodsPerNode: 2, BinDir: "/b"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	s := plan(o)
	if s.Dir != "/tmp/x/weft-abc123" || s.CNIBinDir != "/b/cni" || s.Backend != "vxlan" || !s.IPMasq {
		t.Errorf("defaults: %+v", s)
	}
	if got := s.Nodes[1].PublicIP; got != netip.MustParseAddr("192.0.2.2") {
		t.Errorf("node 2 public IP %s", got)
	}
	if got := s.Nodes[1].Pods[0].NS; got != "weft-abc123-n2-p1" {
		t.Errorf("pod ns %s", got)
	}
	want := "weft-abc123-n1-p1 weft-abc123-n1-p2 weft-abc123-n2-p1 weft-abc123-n2-p2 weft-abc123-n1 weft-abc123-n2 weft-abc123-ctl weft-abc123-ul"
	if got := strings.Join(s.Namespaces(), " "); got != want {
		t.Errorf("namespaces\n got %s\nwant %s", got, want)
	}
	re := labNSPattern("weft-abc123")
	for _, n := range s.Namespaces() {
		if !re.MatchString(n) {
			t.Errorf("pattern misses %s", n)
		}
	}
	for _, n := range []string{"weft-abc123-n1-p1-x", "weft-abc1234-n1", "other-ul", "weft-abc123"} {
		if re.MatchString(n) {
			t.Errorf("pattern matches %s", n)
		}
	}
	var cfg struct {
		Network string
		Backend struct{ Type string }
	}
	if err := json.Unmarshal([]byte(s.networkConfig()), &cfg); err != nil || cfg.Network != "10.244.0.0/16" || cfg.Backend.Type != "vxlan" {
		t.Errorf("network config %s: %v", s.networkConfig(), err)
	}
}

// A dual-stack or IPv6-only plan: the IPv6 underlay address of each node,
// and the network config flannel would read.
func TestPlanIPFamilies(t *testing.T) {
	for _, tc := range []struct {
		family, store, conf string
	}{
		{IPFamilyDual, "", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}`},
		{IPFamilyIPv6, StoreKube, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}`},
	} {
		o, err := Options{Name: "weft-abc123", Root: "/tmp/x", Nodes: 3, BinDir: "/b", Backend: "host-gw",
			IPFamily: tc.family, Store: tc.store, KubeBinDir: "/k"}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		s := plan(o)
		if got := s.networkConfig(); got != tc.conf {
			t.Errorf("%s: network config %s, want %s", tc.family, got, tc.conf)
		}
		if n := s.Nodes[2]; n.PublicIPv6 != netip.MustParseAddr("2001:db8::3") || n.PublicIP != netip.MustParseAddr("192.0.2.3") {
			t.Errorf("%s: node 3 underlay %s %s", tc.family, n.PublicIP, n.PublicIPv6)
		}
		if !s.HasIPv6() || s.HasIPv4() != (tc.family == IPFamilyDual) || len(s.Families()) != map[string]int{IPFamilyDual: 2, IPFamilyIPv6: 1}[tc.family] {
			t.Errorf("%s: families %v", tc.family, s.Families())
		}
	}
	o, err := Options{Name: "weft-abc123", Nodes: 1, BinDir: "/b"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if s := plan(o); s.Nodes[0].PublicIPv6.IsValid() || s.HasIPv6() || s.IPFamily != "" {
		t.Errorf("an IPv4 lab has IPv6: %+v", s.Nodes[0])
	}
}

func TestOptionsValidation(t *testing.T) {
	for _, o := range []Options{
		{Name: "bad name", BinDir: "/b"},
		{Name: "current", BinDir: "/b"},
		{Nodes: 999, BinDir: "/b"},
		{Backend: "ipip", BinDir: "/b"},
		{Network: "10.0.0.0", BinDir: "/b"},
		{PodsPerNode: -1, BinDir: "/b"},
		{IPFamily: "ipv5", BinDir: "/b"},
		{IPFamily: IPFamilyDual, Backend: "udp", BinDir: "/b"},
		{IPFamily: IPFamilyDual, IPv6Network: "10.9.0.0/16", BinDir: "/b"},
		{IPFamily: IPFamilyIPv6, BinDir: "/b"}, // etcd: needs --store kube
	} {
		if _, err := o.withDefaults(); err == nil {
			t.Errorf("%+v: accepted", o)
		}
	}
	o, err := Options{BinDir: "/b"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(o.Name, "weft-") || len(o.Name) != len("weft-")+6 {
		t.Errorf("generated name %q", o.Name)
	}
	if o2, _ := (Options{BinDir: "/b"}).withDefaults(); o2.Name == o.Name {
		t.Errorf("two generated names are both %q", o.Name)
	}
}

func TestPodConflist(t *testing.T) {
	n := &Node{Index: 2, SubnetFile: "/lab/n2/subnet.env", CNIDataDir: "/lab/n2/cni/data"}
	env := subnetenv.Env{
		Network: netip.MustParsePrefix("10.244.0.0/16"),
		Subnet:  netip.MustParsePrefix("10.244.7.1/24"),
		MTU:     1450,
		IPMasq:  true,
	}
	data, err := podConflist(env, n, "iptables")
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatalf("libcni rejects %s: %v", data, err)
	}
	if list.Name != "cbr0" || list.CNIVersion != "0.3.1" || len(list.Plugins) != 2 ||
		list.Plugins[0].Network.Type != "flannel" || list.Plugins[1].Network.Type != "portmap" {
		t.Fatalf("conflist %s", data)
	}
	var portmap struct{ Backend string }
	if err := json.Unmarshal(list.Plugins[1].Bytes, &portmap); err != nil || portmap.Backend != "iptables" {
		t.Errorf("portmap %s: want the backend named (%v)", list.Plugins[1].Bytes, err)
	}
	// What the plugin makes of it on this node: the delegate config it
	// renders from the conflist entry and subnet.env.
	delegate := func(env subnetenv.Env) (m struct {
		Type, Name        string
		IsGateway, IPMasq bool
		HairpinMode       bool
		IsDefaultGateway  bool
		MTU               int
		IPAM              struct {
			Type    string
			DataDir string
			Ranges  [][]struct{ Subnet string }
			Routes  []struct{ Dst string }
		}
	}) {
		t.Helper()
		conf, err := cni.LoadNetConf(list.Plugins[0].Bytes)
		if err != nil {
			t.Fatal(err)
		}
		conf.Name = list.Name // libcni injects the list's name
		if conf.SubnetFile != n.SubnetFile || conf.DataDir != "/lab/n2/cni/data/flannel" {
			t.Errorf("plugin files: subnetFile %q dataDir %q", conf.SubnetFile, conf.DataDir)
		}
		d, err := cni.RenderDelegate(conf, env)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(d)
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	bridge := delegate(env)
	if bridge.Type != "bridge" || bridge.Name != "cbr0" || !bridge.IsGateway || !bridge.IsDefaultGateway ||
		!bridge.HairpinMode || bridge.IPMasq || bridge.MTU != 1450 {
		t.Errorf("bridge %+v", bridge)
	}
	if bridge.IPAM.Type != "host-local" || bridge.IPAM.DataDir != n.CNIDataDir ||
		bridge.IPAM.Ranges[0][0].Subnet != "10.244.7.0/24" || bridge.IPAM.Routes[0].Dst != "10.244.0.0/16" {
		t.Errorf("ipam %+v", bridge.IPAM)
	}
	env.IPMasq = false
	if !delegate(env).IPMasq {
		t.Errorf("without agent masquerading the bridge must masquerade")
	}
	if _, err := podConflist(subnetenv.Env{MTU: 1450}, n, ""); err == nil {
		t.Error("no subnet: accepted")
	}
	if _, err := libcni.ConfListFromBytes(loopbackConflist()); err != nil {
		t.Error(err)
	}
}

func TestStateOpenAndCurrent(t *testing.T) {
	root := t.TempDir()
	var names []string
	for i := 0; i < 2; i++ {
		o, err := Options{Root: root, BinDir: "/b", Nodes: 1}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		s := plan(o)
		if err := os.MkdirAll(s.Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := s.save(); err != nil {
			t.Fatal(err)
		}
		if err := setCurrent(root, s.Dir); err != nil {
			t.Fatal(err)
		}
		names = append(names, s.Name)
	}
	l, err := Open(root, "", nil)
	if err != nil || l.Name != names[1] {
		t.Fatalf("current lab: %v %v, want %s", l, err, names[1])
	}
	l, err = Open(root, names[0], nil)
	if err != nil || l.Name != names[0] {
		t.Fatalf("by name: %v", err)
	}
	l, err = Open("", filepath.Join(root, names[0]), nil)
	if err != nil || l.Name != names[0] || l.Nodes[0].PublicIP != netip.MustParseAddr("192.0.2.1") {
		t.Fatalf("by dir: %+v %v", l, err)
	}
	if _, err := Open(root, "weft-nope", nil); err == nil {
		t.Error("missing lab opened")
	}
	labs, err := List(root)
	if err != nil || len(labs) != 2 {
		t.Fatalf("list: %d %v", len(labs), err)
	}
	if CurrentName(root) != names[1] {
		t.Errorf("current %q", CurrentName(root))
	}
	clearCurrent(root, filepath.Join(root, names[0])) // not current: stays
	if CurrentName(root) != names[1] {
		t.Error("clearCurrent removed another lab's link")
	}
	clearCurrent(root, filepath.Join(root, names[1]))
	if CurrentName(root) != "" {
		t.Error("current link left")
	}
	if _, err := Open(root, "", nil); err == nil {
		t.Error("no current lab, yet one opened")
	}
}

func TestRemoveAllBut(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"etcd.log", "state.json", "etcd/member/wal", "n1/weftd.log", "n1/subnet.env", "n1/cni/data/x"} {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	keep := func(p string) bool { return strings.HasSuffix(p, ".log") || filepath.Base(p) == stateFile }
	if err := removeAllBut(dir, keep); err != nil {
		t.Fatal(err)
	}
	var left []string
	_ = filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error {
		rel, _ := filepath.Rel(dir, p)
		left = append(left, rel)
		return nil
	})
	if got := strings.Join(left, " "); got != ". etcd.log n1 n1/weftd.log state.json" {
		t.Errorf("left %s", got)
	}
}

func TestPlanLateNodes(t *testing.T) {
	for _, o := range []Options{
		{Nodes: 3, LateNodes: 1, BinDir: "/b"},                                     // etcd: nodes join by lease, not by Node
		{Nodes: 3, LateNodes: 3, Store: StoreKube, KubeBinDir: "/k", BinDir: "/b"}, // nobody at Up
		{Nodes: 3, LateNodes: -1, Store: StoreKube, KubeBinDir: "/k", BinDir: "/b"},
	} {
		if _, err := o.withDefaults(); err == nil {
			t.Errorf("%+v: accepted", o)
		}
	}
	o, err := Options{Name: "weft-abc123", Nodes: 3, LateNodes: 1, PodsPerNode: 2, Store: StoreKube, KubeBinDir: "/k", BinDir: "/b"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	l := &Lab{State: plan(o)}
	for _, n := range l.Nodes {
		late := n.Index == 3
		if n.Unregistered != late || (len(n.Pods) == 0) != late {
			t.Errorf("node %d: unregistered %v with %d pods", n.Index, n.Unregistered, len(n.Pods))
		}
	}
	if got := len(l.Pods()); got != 4 {
		t.Errorf("%d pods, want the 4 of the joined nodes", got)
	}
	l.Nodes[1].Unregistered = true // as after DeleteNode
	if got := len(l.Pods()); got != 2 {
		t.Errorf("%d pods after node 2 left, want 2", got)
	}
}

func TestPlanEtcdMembers(t *testing.T) {
	o, err := Options{Name: "weft-abc123", Root: "/tmp/x", BinDir: "/b"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	s := plan(o)
	// One member keeps the layout labs always had.
	if len(s.EtcdMembers) != 1 || s.EtcdEndpoint != "http://192.0.2.254:2379" || s.EtcdMembers[0].PeerURL != "http://127.0.0.1:2380" ||
		s.EtcdMembers[0].Name != "weft-abc123" || s.EtcdLog != "/tmp/x/weft-abc123/etcd.log" || s.EtcdTLS != nil {
		t.Errorf("one member: %+v %+v", s.EtcdMembers, s.EtcdTLS)
	}
	if got := strings.Join(s.EtcdClientArgs(true), " "); got != "--etcd-endpoints=http://192.0.2.254:2379" {
		t.Errorf("client args %s", got)
	}

	o.EtcdMembers, o.EtcdTLS = 3, true
	s = plan(o)
	want := "https://192.0.2.254:2379,https://192.0.2.254:2381,https://192.0.2.254:2383"
	if got := strings.Join(s.EtcdEndpoints(), ","); got != want {
		t.Errorf("endpoints %s, want %s", got, want)
	}
	m3 := s.EtcdMembers[2]
	if m3.Name != "weft-abc123-e3" || m3.PeerURL != "https://127.0.0.1:2384" || m3.DataDir != "/tmp/x/weft-abc123/etcd3" || m3.PIDFile != "/tmp/x/weft-abc123/etcd3.pid" {
		t.Errorf("member 3: %+v", m3)
	}
	tls := s.EtcdTLS
	if tls == nil || tls.User != "weft" || len(tls.Password) != 24 || tls.Password == tls.RootPassword {
		t.Fatalf("TLS: %+v", tls)
	}
	args := strings.Join(s.EtcdClientArgs(false), " ")
	if !strings.Contains(args, "--etcd-endpoints="+want) || !strings.Contains(args, "--etcd-cafile=/tmp/x/weft-abc123/pki/ca.crt") ||
		!strings.Contains(args, "--etcd-username=weft") || strings.Contains(args, "password") {
		t.Errorf("client args %s", args)
	}
	if env := s.EtcdClientEnv(); len(env) != 1 || env[0] != "FLANNELD_ETCD_PASSWORD="+tls.Password {
		t.Errorf("client env %v", env)
	}

	for _, bad := range []Options{
		{EtcdMembers: 6, BinDir: "/b"},
		{EtcdTLS: true, Store: StoreKube, KubeBinDir: "/k", BinDir: "/b"},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
