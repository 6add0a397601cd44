// Package doctor diagnoses one weft node: the store and its leases, the
// agent, the subnet file, the datapath, forwarding and masquerading. What
// an operator would otherwise check by hand (etcdctl get, ip route, ip
// neigh, bridge fdb, iptables -S, sysctl) is gathered into Facts by the
// gatherer in gather_linux.go; Evaluate turns Facts into one Result per
// check, each with its evidence and, when something is wrong, what to do
// next. Evaluate is pure, so every verdict is tested without root.
package doctor

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/agentopts"
	"github.com/weft-net/weft/internal/netif"
	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/subnetenv"
)

// Status is a check's verdict.
type Status int

// Verdicts, mildest first.
const (
	// Skip means the check could not run because something it needs
	// failed earlier; that failure is reported on its own line.
	Skip Status = iota
	OK
	Warn
	Fail
)

func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case Warn:
		return "warn"
	case Fail:
		return "FAIL"
	default:
		return "skip"
	}
}

// MarshalText renders the status as String does, for --json.
func (s Status) MarshalText() ([]byte, error) { return []byte(strings.ToLower(s.String())), nil }

// Result is one check's verdict with its evidence.
type Result struct {
	Check   string   `json:"check"`
	Status  Status   `json:"status"`
	Message string   `json:"message"`           // the evidence
	Hint    string   `json:"hint,omitempty"`    // what to do next, when not ok
	Details []string `json:"details,omitempty"` // a few examples (missing routes, bad keys)
}

// Report is every result, in the order the checks ran.
type Report struct {
	Results []Result `json:"results"`
}

// Failed reports whether any check failed.
func (r Report) Failed() bool {
	for _, x := range r.Results {
		if x.Status == Fail {
			return true
		}
	}
	return false
}

// Counts returns how many results have each status.
func (r Report) Counts() map[Status]int {
	c := map[Status]int{}
	for _, x := range r.Results {
		c[x.Status]++
	}
	return c
}

// WriteText prints one line per check, details indented below it, and a
// summary line.
func (r Report) WriteText(w io.Writer) error {
	var b strings.Builder
	for _, x := range r.Results {
		msg := x.Message
		if x.Hint != "" {
			msg += ": " + x.Hint
		}
		fmt.Fprintf(&b, "%-4s  %-13s %s\n", x.Status, x.Check, msg)
		for _, d := range x.Details {
			fmt.Fprintf(&b, "      %-13s   %s\n", "", d)
		}
	}
	c := r.Counts()
	fmt.Fprintf(&b, "%d ok, %d warn, %d FAIL, %d skipped\n", c[OK], c[Warn], c[Fail], c[Skip])
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON prints the report as one JSON object.
func (r Report) WriteJSON(w io.Writer) error {
	out := struct {
		OK      bool     `json:"ok"`
		Results []Result `json:"results"`
	}{!r.Failed(), r.Results}
	if out.Results == nil {
		out.Results = []Result{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// Facts is what the gatherer found on the node. Each part records its own
// errors: a fact that could not be read is evidence too.
type Facts struct {
	Now time.Time
	// Options are the agent settings doctor checks with.
	Options agentopts.Options
	// SettingsFrom says where Options came from (Settings' answer), for
	// the report; empty when not known.
	SettingsFrom string

	Store StoreFacts
	// Kube is the Kubernetes side, with --kube-subnet-mgr (Store is then
	// empty); nil otherwise.
	Kube       *KubeFacts
	Agent      AgentFacts
	SubnetFile SubnetFileFacts
	Node       NodeFacts
	// Probe are the overlay probes of the remote peers; nil when doctor
	// did not probe.
	Probe *ProbeFacts
}

// StoreFacts are what etcd (or --net-config-file) holds.
type StoreFacts struct {
	// Err is set when no client could be built (bad TLS files).
	Err       error
	Endpoints []EndpointStatus

	// ConfigSource names where the config was read: an etcd key or a file.
	ConfigSource string
	Config       []byte
	ConfigErr    error // lease.ErrNoConfig (wrapped) when the key is absent

	LeasePrefix string // <prefix>/subnets/
	Leases      []RawLease
	LeasesErr   error // listing failed; nil with no leases means none exist
}

// Reachable reports whether any endpoint answered.
func (s StoreFacts) Reachable() bool {
	for _, e := range s.Endpoints {
		if e.Err == nil {
			return true
		}
	}
	return false
}

// EndpointStatus is one etcd endpoint's answer to a status request.
type EndpointStatus struct {
	Endpoint string
	Version  string
	MemberID uint64
	Leader   uint64
	Errors   []string // alarms the member reports (NOSPACE, CORRUPT)
	Err      error
}

// RawLease is one key under <prefix>/subnets/, as stored.
type RawLease struct {
	Key     string // without the prefix
	Value   []byte
	LeaseID int64         // etcd lease; 0 for a reservation
	TTL     time.Duration // remaining; valid when LeaseID != 0 and TTLErr is nil; < 0 when expired
	// Granted is the etcd lease's TTL as granted; weftd renews with a
	// keep-alive, which restarts it, so Granted - TTL is the time since
	// the last grant or renewal.
	Granted time.Duration
	TTLErr  error
}

// AgentFacts are what the node's weftd shows of itself.
type AgentFacts struct {
	Procs   []Process
	ScanErr error
	// Healthz and Readyz are nil when no health port is configured.
	Healthz, Readyz *HTTPProbe
	MarkerPath      string
	MarkerErr       error // readyfile.Check's verdict
}

// Process is one weftd process.
type Process struct {
	PID       int
	SameNetNS bool     // in the network namespace doctor runs in
	Args      []string // command line, program name first
	Env       []string // its FLANNELD_* variables, NAME=value
	// KubeEnv are the variables the Kubernetes store reads (NODE_NAME,
	// POD_NAME, POD_NAMESPACE, KUBERNETES_SERVICE_HOST/PORT), NAME=value.
	KubeEnv []string
}

// HTTPProbe is one GET of the health server.
type HTTPProbe struct {
	URL  string
	Code int
	Body string
	Err  error
}

// SubnetFileFacts is the agent's subnet.env.
type SubnetFileFacts struct {
	Path string
	Env  subnetenv.Env
	Err  error
}

// NodeFacts are the kernel's view of the node's network namespace.
type NodeFacts struct {
	// Ext is the underlay weftd's interface rules choose (ExtErr when they
	// choose none).
	Ext    netif.External
	ExtErr error

	Links    []Link
	LinksErr error
	// Routes are the main table's IPv4 routes.
	Routes    []netlinkx.Route
	RoutesErr error
	// Neighs and FDB are those of the vxlan device (vxlan only).
	Neighs   []netlinkx.Neigh
	NeighErr error
	FDB      []netlinkx.FDB
	FDBErr   error

	// IPv6 is the IPv6 half of the datapath, gathered when the config
	// enables IPv6; nil otherwise.
	IPv6 *IPv6Facts

	// Sysctls are /proc/sys/net values read in this namespace, keyed by
	// their path below /proc/sys ("net/ipv4/ip_forward"); a missing key
	// could not be read.
	Sysctls map[string]string

	// DatapathSockets are the UDP sockets on the ports weftd's own
	// datapath listens on (udp, wireguard-go), with the buffers the kernel
	// gave them; read for those backends only.
	DatapathSockets    []netlinkx.UDPSocket
	DatapathSocketsErr error

	Masq MasqFacts
}

// IPv6Facts are the kernel's IPv6 routes, and flannel-v6.<VNI>'s
// neighbours and FDB (vxlan), and the ip6tables masquerade rules.
type IPv6Facts struct {
	Routes    []netlinkx.Route // main table, IPv6
	RoutesErr error
	Neighs    []netlinkx.Neigh
	NeighErr  error
	FDB       []netlinkx.FDB
	FDBErr    error
	// Masq is ip6tables' WEFT-POSTRTG (iptables mode; with nftables the
	// inet table of NodeFacts.Masq holds both families' rules).
	Masq MasqFacts
}

// Link is one network interface.
type Link struct {
	Name  string
	Index int
	Kind  string // vxlan, tuntap, bridge, veth, device, ...
	MAC   net.HardwareAddr
	MTU   int
	Up    bool
	Addrs []netip.Prefix
	// GSOIPv4MaxSize is the kernel's gso_ipv4_max_size; 0 if not reported.
	GSOIPv4MaxSize int
}

// MasqFacts are the masquerade rules found, with the tool weftd would use.
type MasqFacts struct {
	Checked bool   // false when there was no reason to look
	Tool    string // "iptables" or "nftables"
	Err     error
	// iptables: the nat chain WEFT-POSTRTG (`iptables -t nat -S`) and
	// whether POSTROUTING jumps to it.
	ChainExists bool
	Rules       []string
	Jump        bool
	// nftables: table inet weft and its postrouting chain's rule comments.
	TableExists bool
	Comments    []string
}
