// Package lab builds a multi-node weft cluster out of network namespaces on
// one machine: an underlay bridge, an etcd server, one weftd per node and
// pods attached through the real CNI plugins. It is the demo, the basis of
// the end-to-end tests and the benchmarks.
//
// Nothing is created in the root namespace. Every lab has a unique name, and
// every namespace it creates starts with that name, so that Down can find and
// remove all of it even after a crash half-way through Up.
package lab

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/kubecp"
)

// Defaults.
const (
	DefaultRoot        = "/tmp/weft-lab"
	DefaultNodes       = 3
	DefaultPodsPerNode = 2
	DefaultBackend     = config.BackendVXLAN
	DefaultNetwork     = "10.244.0.0/16"
	// DefaultIPv6Network is the cluster's IPv6 network with --ip-family
	// dual or ipv6: a /64 per node.
	DefaultIPv6Network = "fd00:10:244::/56"
	// DefaultUnderlayGSO makes the underlay's NICs BIG TCP ones (192 KiB
	// GSO and GRO packets, as Cilium sets on server NICs), so that the
	// fabric is measured against a host that uses what its NIC offers.
	DefaultUnderlayGSO = 196608
	// KernelGSO is the kernel's default GSO limit: no BIG TCP.
	KernelGSO = 65536
	maxGSO    = 524280 // a veth's tso_max_size

	// The underlay: node i is 192.0.2.i, the control namespace .254; with
	// IPv6, node i is also 2001:db8::i (the documentation prefix), the
	// control namespace 2001:db8::fe.
	underlayPrefix  = "192.0.2.0/24"
	ctlAddr         = "192.0.2.254"
	underlayPrefix6 = "2001:db8::/64"
	ctlAddr6        = "2001:db8::fe"
	etcdPort        = 2379 // member i serves clients on etcdPort+2(i-1), peers on the next port
	maxEtcdMembers  = 5
	// healthzPort is where each weftd serves /healthz and /readyz, on the
	// node namespace's loopback.
	healthzPort = 8471
	maxNodes    = 250
)

// IP families of the cluster network (--ip-family).
const (
	// IPFamilyIPv4 is an IPv4 cluster network (the default).
	IPFamilyIPv4 = "ipv4"
	// IPFamilyDual gives pods an IPv4 and an IPv6 address (EnableIPv6).
	IPFamilyDual = "dual"
	// IPFamilyIPv6 gives pods IPv6 addresses only (EnableIPv4 false).
	IPFamilyIPv6 = "ipv6"
)

// Lease stores a lab can run on.
const (
	// StoreEtcd keeps leases in etcd, under flannel's keys.
	StoreEtcd = "etcd"
	// StoreKube runs a Kubernetes control plane (backed by the lab's etcd)
	// and each weftd with --kube-subnet-mgr, as in a DaemonSet.
	StoreKube = "kube"
)

// Options say what lab to build. The zero value of each field means its
// default.
type Options struct {
	Name        string // default weft-<6 hex>
	Root        string // parent of the lab directory; default DefaultRoot
	Dir         string // the lab directory; default Root/Name
	Nodes       int
	PodsPerNode int
	Backend     string // vxlan, host-gw, udp or wireguard
	Network     string // cluster network CIDR
	// IPFamily is IPFamilyIPv4 (default), IPFamilyDual or IPFamilyIPv6.
	// With IPv6 the underlay gets 2001:db8::/64 beside 192.0.2.0/24.
	IPFamily    string
	IPv6Network string // cluster IPv6 network; default DefaultIPv6Network
	Store       string // StoreEtcd (default) or StoreKube
	// EtcdMembers is how many etcd members the control namespace runs,
	// one cluster; every agent is given every member's endpoint. Default 1.
	EtcdMembers int
	// EtcdTLS runs etcd as a secured cluster is run, with StoreEtcd: TLS
	// for clients and peers, client certificates required (a CA and
	// certificates made in the lab directory), and etcd's authentication
	// on, each agent logging in as a user allowed the network prefix only.
	EtcdTLS bool
	// LateNodes, with StoreKube, are how many of the last nodes join
	// later: Up lays out their namespaces and kubeconfigs but neither
	// registers their Node objects nor starts their agents nor gives them
	// pods (RegisterNode, StartAgent and AddPod do, as a node joining a
	// cluster would).
	LateNodes int
	// KubeBinDir holds kube-apiserver and kube-controller-manager for
	// StoreKube; default kubecp.DefaultBinDir().
	KubeBinDir string
	// IPMasq runs weftd with --ip-masq, as flannel is deployed; the CNI
	// bridge then does no masquerading of its own. Default true.
	IPMasq *bool
	// BinDir holds weft and weftd; default the directory of the running
	// executable.
	BinDir string
	// CNIBinDir holds the CNI plugins (bridge, host-local, portmap,
	// loopback); default BinDir/cni.
	CNIBinDir string
	// WeftdArgs are added to every weftd command line.
	WeftdArgs []string
	// UnderlayGSO is the gso_ipv4_max_size and gro_ipv4_max_size of the
	// underlay's links (node eth0s and the switch); default
	// DefaultUnderlayGSO, KernelGSO for none of BIG TCP.
	UnderlayGSO int
	// ReadyTimeout bounds the wait for the store and the agents; default 60s.
	ReadyTimeout time.Duration
	Log          *slog.Logger
}

// State is what a lab writes to its state file so that later invocations
// (check, bench, down) can work on it.
type State struct {
	Name         string    `json:"name"`
	Dir          string    `json:"dir"`
	Created      time.Time `json:"created"`
	Backend      string    `json:"backend"`
	Network      string    `json:"network"`
	IPFamily     string    `json:"ipFamily,omitempty"` // "" is IPFamilyIPv4
	IPv6Network  string    `json:"ipv6Network,omitempty"`
	IPMasq       bool      `json:"ipMasq"`
	BinDir       string    `json:"binDir"`
	CNIBinDir    string    `json:"cniBinDir"`
	UnderlayNS   string    `json:"underlayNS"`
	ControlNS    string    `json:"controlNS"`
	EtcdEndpoint string    `json:"etcdEndpoint"` // member 1's
	EtcdLog      string    `json:"etcdLog"`      // member 1's
	// EtcdMembers are the etcd cluster's members, all in ControlNS.
	EtcdMembers []EtcdMember `json:"etcdMembers"`
	EtcdTLS     *EtcdTLS     `json:"etcdTLS,omitempty"`
	Store       string       `json:"store"`
	// The Kubernetes side, with StoreKube: the control plane's files and
	// URL, and the net-conf.json every agent reads (--net-config-path).
	KubeBinDir      string   `json:"kubeBinDir,omitempty"`
	KubeDir         string   `json:"kubeDir,omitempty"`
	APIServer       string   `json:"apiServer,omitempty"`
	AdminKubeconfig string   `json:"adminKubeconfig,omitempty"`
	NetConfFile     string   `json:"netConfFile,omitempty"`
	WeftdArgs       []string `json:"weftdArgs,omitempty"` // extra flags for every weftd
	UnderlayGSO     int      `json:"underlayGSO"`         // as asked; 0 once the kernel turned out to have no BIG TCP
	Nodes           []Node   `json:"nodes"`
	// Ready is set once Up has finished.
	Ready bool `json:"ready"`
}

// EtcdMember is one member of the lab's etcd cluster.
type EtcdMember struct {
	Index     int    `json:"index"` // 1-based
	Name      string `json:"name"`
	ClientURL string `json:"clientURL"` // on the underlay, for the agents
	PeerURL   string `json:"peerURL"`   // on the control namespace's loopback
	DataDir   string `json:"dataDir"`
	Log       string `json:"log"`
	PIDFile   string `json:"pidFile"`
}

// EtcdTLS are a secured lab etcd's credentials: the files every member and
// agent is given, the agents' user and the administrator's password.
type EtcdTLS struct {
	CA         string `json:"ca"`
	ServerCert string `json:"serverCert"` // the members', for clients and peers
	ServerKey  string `json:"serverKey"`
	ClientCert string `json:"clientCert"` // the agents' and the lab's own
	ClientKey  string `json:"clientKey"`
	// User may read and write the network prefix only; root may do all.
	User         string `json:"user"`
	Password     string `json:"password"`
	RootPassword string `json:"rootPassword"`
}

// Node is one weft node: a namespace with eth0 on the underlay and a weftd.
type Node struct {
	Index      int    `json:"index"` // 1-based
	NS         string `json:"ns"`
	Name       string `json:"name"` // the Node object's name, with StoreKube
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// Unregistered, with StoreKube: its Node object is not in the API
	// server, not yet (Options.LateNodes) or no longer (DeleteNode).
	// WaitReady and Check leave it out.
	Unregistered bool         `json:"unregistered,omitempty"`
	PublicIP     netip.Addr   `json:"publicIP"`
	Subnet       netip.Prefix `json:"subnet,omitzero"` // FLANNEL_SUBNET once known
	PublicIPv6   netip.Addr   `json:"publicIPv6,omitzero"`
	Subnet6      netip.Prefix `json:"subnet6,omitzero"` // FLANNEL_IPV6_SUBNET once known
	Dir          string       `json:"dir"`
	SubnetFile   string       `json:"subnetFile"`
	Log          string       `json:"log"`
	PIDFile      string       `json:"pidFile"`
	CNIDataDir   string       `json:"cniDataDir"`
	CNICache     string       `json:"cniCacheDir"`
	Pods         []Pod        `json:"pods"`
}

// Pod is a pod namespace attached to a node's bridge by the CNI plugins.
type Pod struct {
	Name        string     `json:"name"` // n<i>p<j>, for tables
	NS          string     `json:"ns"`
	Node        int        `json:"node"`
	ContainerID string     `json:"containerID"`
	IP          netip.Addr `json:"ip"`           // invalid in an IPv6-only lab
	IP6         netip.Addr `json:"ip6,omitzero"` // with IPv6
}

// Addr is the pod's address of one family; invalid if it has none.
func (p Pod) Addr(ipv6 bool) netip.Addr {
	if ipv6 {
		return p.IP6
	}
	return p.IP
}

// Lab is a lab that exists (or partly exists) on this machine.
type Lab struct {
	State
	log *slog.Logger
	// cniExec runs the CNI plugins of pods; nil is libcni's own. The CNI
	// bench times the plugins through it.
	cniExec invoke.Exec

	portmapOnce sync.Once
	portmap     string // see portmapBackend
}

// NewName returns a fresh lab name, weft-<6 hex>.
func NewName() string { return "weft-" + randomHex(3) }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (Go ≥ 1.24)
	return hex.EncodeToString(b)
}

// withDefaults fills in the zero fields of o.
func (o Options) withDefaults() (Options, error) {
	if o.Name == "" {
		o.Name = NewName()
	}
	if err := validName(o.Name); err != nil {
		return o, err
	}
	if o.Root == "" {
		o.Root = DefaultRoot
	}
	if o.Dir == "" {
		o.Dir = filepath.Join(o.Root, o.Name)
	}
	if o.Nodes == 0 {
		o.Nodes = DefaultNodes
	}
	if o.Nodes < 1 || o.Nodes > maxNodes {
		return o, fmt.Errorf("nodes %d: must be 1..%d", o.Nodes, maxNodes)
	}
	if o.PodsPerNode == 0 {
		o.PodsPerNode = DefaultPodsPerNode
	}
	if o.PodsPerNode < 0 {
		return o, fmt.Errorf("pods per node %d: must not be negative", o.PodsPerNode)
	}
	if o.Backend == "" {
		o.Backend = DefaultBackend
	}
	switch o.Backend {
	case config.BackendVXLAN, config.BackendHostGW, config.BackendUDP, config.BackendWireGuard:
	default:
		return o, fmt.Errorf("backend %q: want vxlan, host-gw, udp or wireguard", o.Backend)
	}
	if o.Network == "" {
		o.Network = DefaultNetwork
	}
	switch o.IPFamily {
	case "":
		o.IPFamily = IPFamilyIPv4
	case IPFamilyIPv4, IPFamilyDual, IPFamilyIPv6:
	default:
		return o, fmt.Errorf("ip family %q: want %s, %s or %s", o.IPFamily, IPFamilyIPv4, IPFamilyDual, IPFamilyIPv6)
	}
	if o.IPFamily != IPFamilyIPv4 {
		if o.Backend == config.BackendUDP {
			return o, fmt.Errorf("ip family %s: backend %s carries IPv4 only; use vxlan, host-gw or wireguard", o.IPFamily, o.Backend)
		}
		if o.IPFamily == IPFamilyIPv6 && o.Store != StoreKube {
			// As flannel: etcd keys need an IPv4 subnet (see etcdstore.CheckNetwork).
			return o, fmt.Errorf("ip family %s: needs --store %s; an IPv6-only network cannot live in etcd beside flannel nodes", o.IPFamily, StoreKube)
		}
		if o.IPv6Network == "" {
			o.IPv6Network = DefaultIPv6Network
		}
		if p, err := netip.ParsePrefix(o.IPv6Network); err != nil || !p.Addr().Is6() {
			return o, fmt.Errorf("IPv6 network %q: not an IPv6 CIDR", o.IPv6Network)
		}
	}
	switch o.Store {
	case "":
		o.Store = StoreEtcd
	case StoreEtcd, StoreKube:
	default:
		return o, fmt.Errorf("store %q: want %s or %s", o.Store, StoreEtcd, StoreKube)
	}
	if o.EtcdMembers == 0 {
		o.EtcdMembers = 1
	}
	if o.EtcdMembers < 1 || o.EtcdMembers > maxEtcdMembers {
		return o, fmt.Errorf("etcd members %d: must be 1..%d", o.EtcdMembers, maxEtcdMembers)
	}
	if o.EtcdTLS && o.Store != StoreEtcd {
		return o, fmt.Errorf("etcd TLS: only with store %s (the lab's API server talks plain HTTP to etcd)", StoreEtcd)
	}
	if o.LateNodes != 0 && o.Store != StoreKube {
		return o, fmt.Errorf("late nodes: only with store %s, where nodes join by their Node objects", StoreKube)
	}
	if o.LateNodes < 0 || o.LateNodes >= o.Nodes {
		return o, fmt.Errorf("late nodes %d: must be 0..%d (at least one node joins at Up)", o.LateNodes, o.Nodes-1)
	}
	if o.Store == StoreKube && o.KubeBinDir == "" {
		d, err := kubecp.DefaultBinDir()
		if err != nil {
			return o, err
		}
		o.KubeBinDir = d
	}
	if _, err := netip.ParsePrefix(o.Network); err != nil {
		return o, fmt.Errorf("network %q: %w", o.Network, err)
	}
	if o.IPMasq == nil {
		t := true
		o.IPMasq = &t
	}
	if o.UnderlayGSO == 0 {
		o.UnderlayGSO = DefaultUnderlayGSO
	}
	if o.UnderlayGSO < KernelGSO || o.UnderlayGSO > maxGSO {
		return o, fmt.Errorf("underlay GSO size %d: must be %d (no BIG TCP) to %d", o.UnderlayGSO, KernelGSO, maxGSO)
	}
	if o.BinDir == "" {
		exe, err := os.Executable()
		if err != nil {
			return o, fmt.Errorf("finding the weft binaries: %w", err)
		}
		o.BinDir = filepath.Dir(exe)
	}
	if o.CNIBinDir == "" {
		o.CNIBinDir = filepath.Join(o.BinDir, "cni")
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 60 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// validName keeps names usable as namespace names and file names, and short
// enough that "<name>-n250-p99" stays readable.
func validName(name string) error {
	if len(name) == 0 || len(name) > 32 {
		return fmt.Errorf("lab name %q: must be 1..32 characters", name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("lab name %q: only letters, digits, '-' and '_'", name)
		}
	}
	if name == currentLink {
		return fmt.Errorf("lab name %q is reserved", name)
	}
	return nil
}

// plan lays out the lab's names, addresses and files; nothing is created.
func plan(o Options) State {
	s := State{
		Name:        o.Name,
		Dir:         o.Dir,
		Created:     time.Now().UTC().Truncate(time.Second),
		Backend:     o.Backend,
		Network:     o.Network,
		IPMasq:      *o.IPMasq,
		IPv6Network: o.IPv6Network,
		BinDir:      o.BinDir,
		CNIBinDir:   o.CNIBinDir,
		UnderlayNS:  o.Name + "-ul",
		ControlNS:   o.Name + "-ctl",
		Store:       o.Store,
		WeftdArgs:   o.WeftdArgs,
		UnderlayGSO: o.UnderlayGSO,
	}
	if o.IPFamily != IPFamilyIPv4 {
		s.IPFamily = o.IPFamily
	}
	scheme := "http"
	if o.EtcdTLS {
		scheme = "https"
		pki := filepath.Join(o.Dir, "pki")
		s.EtcdTLS = &EtcdTLS{
			CA:         filepath.Join(pki, "ca.crt"),
			ServerCert: filepath.Join(pki, "etcd.crt"), ServerKey: filepath.Join(pki, "etcd.key"),
			ClientCert: filepath.Join(pki, "weft.crt"), ClientKey: filepath.Join(pki, "weft.key"),
			User: "weft", Password: randomHex(12), RootPassword: randomHex(12),
		}
	}
	for i := 1; i <= o.EtcdMembers; i++ {
		// Member 1 keeps the names a one-member lab always had.
		m := EtcdMember{
			Index:     i,
			Name:      o.Name,
			ClientURL: fmt.Sprintf("%s://%s:%d", scheme, ctlAddr, etcdPort+2*(i-1)),
			PeerURL:   fmt.Sprintf("%s://127.0.0.1:%d", scheme, etcdPort+2*(i-1)+1),
			DataDir:   filepath.Join(o.Dir, "etcd"),
			Log:       filepath.Join(o.Dir, "etcd.log"),
			PIDFile:   filepath.Join(o.Dir, "etcd.pid"),
		}
		if o.EtcdMembers > 1 {
			m.Name = fmt.Sprintf("%s-e%d", o.Name, i)
		}
		if i > 1 {
			m.DataDir = filepath.Join(o.Dir, fmt.Sprintf("etcd%d", i))
			m.Log = filepath.Join(o.Dir, fmt.Sprintf("etcd%d.log", i))
			m.PIDFile = filepath.Join(o.Dir, fmt.Sprintf("etcd%d.pid", i))
		}
		s.EtcdMembers = append(s.EtcdMembers, m)
	}
	s.EtcdEndpoint, s.EtcdLog = s.EtcdMembers[0].ClientURL, s.EtcdMembers[0].Log
	if o.Store == StoreKube {
		s.KubeBinDir = o.KubeBinDir
		s.KubeDir = filepath.Join(o.Dir, "kube")
		s.NetConfFile = filepath.Join(o.Dir, "net-conf.json")
	}
	for i := 1; i <= o.Nodes; i++ {
		dir := filepath.Join(o.Dir, fmt.Sprintf("n%d", i))
		n := Node{
			Index:      i,
			NS:         fmt.Sprintf("%s-n%d", o.Name, i),
			Name:       strings.ToLower(fmt.Sprintf("%s-n%d", o.Name, i)),
			PublicIP:   netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}),
			PublicIPv6: s.underlayAddr6(i),
			Dir:        dir,
			SubnetFile: filepath.Join(dir, "subnet.env"),
			Log:        filepath.Join(dir, "weftd.log"),
			PIDFile:    filepath.Join(dir, "weftd.pid"),
			CNIDataDir: filepath.Join(dir, "cni", "data"),
			CNICache:   filepath.Join(dir, "cni", "cache"),
		}
		if i > o.Nodes-o.LateNodes {
			// Its pods come once it has joined (AddPod).
			n.Unregistered = true
			s.Nodes = append(s.Nodes, n)
			continue
		}
		for j := 1; j <= o.PodsPerNode; j++ {
			n.Pods = append(n.Pods, Pod{
				Name:        fmt.Sprintf("n%dp%d", i, j),
				NS:          fmt.Sprintf("%s-n%d-p%d", o.Name, i, j),
				Node:        i,
				ContainerID: fmt.Sprintf("%s-n%d-p%d", o.Name, i, j),
			})
		}
		s.Nodes = append(s.Nodes, n)
	}
	return s
}

// networkConfig is the JSON the store is seeded with.
func (s *State) networkConfig() string {
	switch s.IPFamily {
	case IPFamilyDual:
		return fmt.Sprintf(`{"Network":%q,"EnableIPv6":true,"IPv6Network":%q,"Backend":{"Type":%q}}`, s.Network, s.IPv6Network, s.Backend)
	case IPFamilyIPv6:
		return fmt.Sprintf(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":%q,"Backend":{"Type":%q}}`, s.IPv6Network, s.Backend)
	}
	return fmt.Sprintf(`{"Network":%q,"Backend":{"Type":%q}}`, s.Network, s.Backend)
}

// HasIPv4 and HasIPv6 say which families pods get addresses of.
func (s *State) HasIPv4() bool { return s.IPFamily != IPFamilyIPv6 }

// HasIPv6: see HasIPv4.
func (s *State) HasIPv6() bool { return s.IPFamily == IPFamilyDual || s.IPFamily == IPFamilyIPv6 }

// Families lists the families pods get addresses of, IPv4 first: false
// for IPv4, true for IPv6.
func (s *State) Families() []bool {
	var out []bool
	if s.HasIPv4() {
		out = append(out, false)
	}
	if s.HasIPv6() {
		out = append(out, true)
	}
	return out
}

// familyName is the lab's IP family as --ip-family names it.
func (s *State) familyName() string {
	if s.IPFamily == "" {
		return IPFamilyIPv4
	}
	return s.IPFamily
}

// underlayAddr6 is node i's IPv6 underlay address, 2001:db8::<i> (i in
// hex, as the last group), or invalid without IPv6.
func (s *State) underlayAddr6(i int) netip.Addr {
	if !s.HasIPv6() {
		return netip.Addr{}
	}
	a := netip.MustParsePrefix(underlayPrefix6).Addr().As16()
	a[14], a[15] = byte(i>>8), byte(i)
	return netip.AddrFrom16(a)
}

// WGKeyFile is where node n's weftd keeps its WireGuard key
// (WIREGUARD_KEY_FILE): one per node, in the node's directory.
func (n *Node) WGKeyFile() string { return filepath.Join(n.Dir, "wgkey") }

// NodeNS returns the namespace of node i (1-based).
func (l *Lab) NodeNS(i int) string { return l.node(i).NS }

// Node returns node i (1-based).
func (l *Lab) Node(i int) *Node { return l.node(i) }

func (l *Lab) node(i int) *Node {
	if i < 1 || i > len(l.Nodes) {
		panic(fmt.Sprintf("lab %s has no node %d", l.Name, i))
	}
	return &l.Nodes[i-1]
}

// EtcdEndpoint is the store's first client URL, reachable from every node
// namespace.
func (l *Lab) EtcdEndpoint() string { return l.State.EtcdEndpoint }

// EtcdEndpoints are every member's client URL.
func (s *State) EtcdEndpoints() []string {
	if len(s.EtcdMembers) == 0 {
		return []string{s.EtcdEndpoint} // a state file from before members
	}
	var out []string
	for _, m := range s.EtcdMembers {
		out = append(out, m.ClientURL)
	}
	return out
}

// EtcdClientArgs are the flags weftd and weft doctor reach the lab's etcd
// with, as flanneld's: every endpoint and, with EtcdTLS, the client
// certificate, the CA and the agents' user. The password is given as
// FLANNELD_ETCD_PASSWORD (EtcdClientEnv), or with withPassword as a flag.
func (s *State) EtcdClientArgs(withPassword bool) []string {
	args := []string{"--etcd-endpoints=" + strings.Join(s.EtcdEndpoints(), ",")}
	if t := s.EtcdTLS; t != nil {
		args = append(args, "--etcd-certfile="+t.ClientCert, "--etcd-keyfile="+t.ClientKey, "--etcd-cafile="+t.CA,
			"--etcd-username="+t.User)
		if withPassword {
			args = append(args, "--etcd-password="+t.Password)
		}
	}
	return args
}

// EtcdClientEnv is the environment that goes with EtcdClientArgs(false).
func (s *State) EtcdClientEnv() []string {
	if s.EtcdTLS == nil {
		return nil
	}
	return []string{"FLANNELD_ETCD_PASSWORD=" + s.EtcdTLS.Password}
}

// Pods returns every pod in node order, but for those of Unregistered
// nodes: no longer in the cluster, they are not expected to answer.
func (l *Lab) Pods() []Pod {
	var ps []Pod
	for _, n := range l.Nodes {
		if n.Unregistered {
			continue
		}
		ps = append(ps, n.Pods...)
	}
	return ps
}

// Namespaces returns every namespace of the lab, pods first and the underlay
// last: the order to delete them in.
func (s *State) Namespaces() []string {
	var out []string
	for _, n := range s.Nodes {
		for _, p := range n.Pods {
			out = append(out, p.NS)
		}
	}
	for _, n := range s.Nodes {
		out = append(out, n.NS)
	}
	return append(out, s.ControlNS, s.UnderlayNS)
}
