package doctor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-iptables/iptables"
	clientv3 "go.etcd.io/etcd/client/v3"
	"sigs.k8s.io/knftables"

	"github.com/weft-net/weft/internal/agentopts"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease/etcdstore"
	"github.com/weft-net/weft/internal/lease/kubeannot"
	"github.com/weft-net/weft/internal/masq"
	"github.com/weft-net/weft/internal/netif"
	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/readyfile"
	"github.com/weft-net/weft/internal/subnetenv"
)

// DefaultTimeout bounds each network call doctor makes (etcd, health).
const DefaultTimeout = 3 * time.Second

// ttlLookups bounds concurrent etcd lease TTL requests.
const ttlLookups = 8

// Gather reads the facts of the network namespace the calling process is
// in (run it under `ip netns exec` to diagnose another): the store at
// o.Etcd, the agent's processes and health server, o.SubnetFile, the
// kernel's links, routes, neighbours, FDB, sysctls and firewall rules.
// timeout bounds each network call. It never fails: what it cannot read
// is recorded in the facts.
func Gather(ctx context.Context, o agentopts.Options, timeout time.Duration) Facts {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	f := Facts{Now: time.Now(), Options: o}
	f.Agent = gatherAgent(ctx, o, f.Now, timeout, "/proc")
	raw := []byte(nil)
	nodeOpts := o
	if o.KubeSubnetMgr {
		f.Kube = gatherKube(ctx, o, kubeSource{agent: agentHere(f.Agent.Procs), procRoot: "/proc", getenv: os.Getenv}, timeout)
		raw = f.Kube.Config
		nodeOpts.Iface.PublicIP = kubePublicIPOverride(o, f.Kube)
	} else {
		f.Store = gatherStore(ctx, o, timeout)
		raw = f.Store.Config
	}
	f.SubnetFile.Path = o.SubnetFile
	f.SubnetFile.Env, f.SubnetFile.Err = subnetenv.Read(o.SubnetFile)

	var n *config.Network
	if raw != nil {
		n, _, _ = config.Parse(raw)
	}
	f.Node = gatherNode(ctx, nodeOpts, n, f.SubnetFile)
	return f
}

// agentHere is the one weftd in this network namespace, or nil.
func agentHere(procs []Process) *Process {
	var mine *Process
	for i, p := range procs {
		if p.SameNetNS {
			if mine != nil {
				return nil
			}
			mine = &procs[i]
		}
	}
	return mine
}

// kubePublicIPOverride is the --public-ip the agent runs with: its Node's
// node-public-ip annotation, when set, replaces the flag's (flannel
// main.go:306-312), so the underlay is chosen as weftd chooses it.
func kubePublicIPOverride(o agentopts.Options, k *KubeFacts) netip.Addr {
	if k.Node == nil {
		return o.Iface.PublicIP
	}
	keys, err := kubeannot.NewKeys(o.KubeAnnotationPrefix)
	if err != nil {
		return o.Iface.PublicIP
	}
	if v4, _, err := keys.NodePublicIPs(k.Node.Annotations); err == nil && v4.IsValid() {
		return v4
	}
	return o.Iface.PublicIP
}

// ---- store ----

func gatherStore(ctx context.Context, o agentopts.Options, timeout time.Duration) StoreFacts {
	var s StoreFacts
	if o.NetConfigFile != "" {
		s.ConfigSource = o.NetConfigFile
		s.Config, s.ConfigErr = os.ReadFile(o.NetConfigFile)
	}
	cli, err := etcdstore.Connect(ctx, etcdstore.ClientOptions(o.Etcd))
	if err != nil {
		s.Err = err
		return s
	}
	defer cli.Close()
	st := etcdstore.New(cli, etcdstore.Options{Prefix: o.EtcdPrefix})
	s.LeasePrefix = st.SubnetsPrefix()
	if o.NetConfigFile == "" {
		s.ConfigSource = st.ConfigKey()
	}

	for _, ep := range o.Etcd.Endpoints {
		s.Endpoints = append(s.Endpoints, endpointStatus(ctx, cli, ep, timeout))
	}
	if !s.Reachable() {
		return s
	}
	if o.NetConfigFile == "" {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		s.Config, s.ConfigErr = st.NetworkConfig(cctx)
		cancel()
	}

	lctx, cancel := context.WithTimeout(ctx, timeout)
	resp, err := cli.Get(lctx, s.LeasePrefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		s.LeasesErr = err
		return s
	}
	for _, kv := range resp.Kvs {
		s.Leases = append(s.Leases, RawLease{
			Key:     strings.TrimPrefix(string(kv.Key), s.LeasePrefix),
			Value:   kv.Value,
			LeaseID: kv.Lease,
		})
	}
	fillTTLs(ctx, cli, s.Leases, timeout)
	return s
}

// endpointStatus dials the endpoint first, so that an unreachable one is
// reported with the dial's own error rather than gRPC's deadline.
func endpointStatus(ctx context.Context, cli *clientv3.Client, ep string, timeout time.Duration) EndpointStatus {
	es := EndpointStatus{Endpoint: ep}
	host := ep
	if u, err := url.Parse(ep); err == nil && u.Host != "" {
		host = u.Host
	}
	d := net.Dialer{Timeout: timeout}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	conn, err := d.DialContext(dctx, "tcp", host)
	cancel()
	if err != nil {
		es.Err = err
		return es
	}
	conn.Close()
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := cli.Status(sctx, ep)
	if err != nil {
		es.Err = fmt.Errorf("status: %w", err)
		return es
	}
	es.Version, es.Leader, es.Errors = resp.Version, resp.Leader, resp.Errors
	if resp.Header != nil {
		es.MemberID = resp.Header.MemberId
	}
	return es
}

// fillTTLs looks up the remaining time of each lease's etcd lease.
func fillTTLs(ctx context.Context, cli *clientv3.Client, leases []RawLease, timeout time.Duration) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, ttlLookups)
	for i := range leases {
		if leases[i].LeaseID == 0 {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(r *RawLease) {
			defer func() { <-sem; wg.Done() }()
			tctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			resp, err := cli.TimeToLive(tctx, clientv3.LeaseID(r.LeaseID))
			if err != nil {
				r.TTLErr = err
				return
			}
			r.TTL = time.Duration(resp.TTL) * time.Second // -1 s when expired
			r.Granted = time.Duration(resp.GrantedTTL) * time.Second
		}(&leases[i])
	}
	wg.Wait()
}

// ---- agent ----

func gatherAgent(ctx context.Context, o agentopts.Options, now time.Time, timeout time.Duration, procRoot string) AgentFacts {
	var a AgentFacts
	a.Procs, a.ScanErr = scanProcs(procRoot, "weftd")
	if o.HealthzPort != 0 {
		host := o.HealthzIP
		if ip, err := netip.ParseAddr(host); err != nil || ip.IsUnspecified() {
			host = "127.0.0.1" // listening on all addresses: ask loopback
		}
		base := "http://" + net.JoinHostPort(host, strconv.Itoa(o.HealthzPort))
		a.Healthz = probe(ctx, base+"/healthz", timeout)
		a.Readyz = probe(ctx, base+"/readyz", timeout)
	}
	a.MarkerPath = readyfile.Path(o.SubnetFile)
	a.MarkerErr = readyfile.Check(a.MarkerPath, now)
	return a
}

// scanProcs lists the processes called name, noting which share this
// process's network namespace (several agents run side by side in a lab,
// one per namespace).
func scanProcs(procRoot, name string) ([]Process, error) {
	self, err := os.Readlink(filepath.Join(procRoot, "self", "ns", "net"))
	if err != nil {
		return nil, fmt.Errorf("own network namespace: %w", err)
	}
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, err
	}
	var out []Process
	var denied error
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		dir := filepath.Join(procRoot, ent.Name())
		comm, err := os.ReadFile(filepath.Join(dir, "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != name {
			continue // gone, or another program
		}
		p := Process{PID: pid}
		if cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil {
			p.Args = strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		}
		if env, err := os.ReadFile(filepath.Join(dir, "environ")); err == nil {
			for _, kv := range bytes.Split(env, []byte{0}) {
				switch k, _, _ := bytes.Cut(kv, []byte("=")); {
				case bytes.HasPrefix(kv, []byte("FLANNELD_")):
					p.Env = append(p.Env, string(kv))
				case slices.Contains(kubeEnvNames, string(k)):
					p.KubeEnv = append(p.KubeEnv, string(kv))
				}
			}
		}
		ns, err := os.Readlink(filepath.Join(dir, "ns", "net"))
		if err != nil {
			if errors.Is(err, os.ErrPermission) {
				denied = err
			}
			if errors.Is(err, os.ErrNotExist) {
				continue // exited meanwhile
			}
		}
		p.SameNetNS = err == nil && ns == self
		out = append(out, p)
	}
	return out, denied
}

func probe(ctx context.Context, u string, timeout time.Duration) *HTTPProbe {
	p := &HTTPProbe{URL: u}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		p.Err = err
		return p
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is already in the report
		}
		p.Err = err
		return p
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	p.Code, p.Body = resp.StatusCode, string(body)
	return p
}

// ---- node ----

func gatherNode(ctx context.Context, o agentopts.Options, n *config.Network, sf SubnetFileFacts) NodeFacts {
	var nf NodeFacts
	h, err := netlinkx.New()
	if err != nil {
		nf.ExtErr, nf.LinksErr, nf.RoutesErr = err, err, err
		return nf
	}
	defer h.Close()
	// As weftd chooses: for the config's families (IPv4 while the config
	// is unknown).
	stack := netif.IPv4
	if n != nil {
		if st, err := netif.StackOf(n.EnableIPv4, n.EnableIPv6); err == nil {
			stack = st
		}
	}
	nf.Ext, nf.ExtErr = netif.SelectOn(h, o.Iface, stack, nil)
	nf.Links, nf.LinksErr = links(h)
	nf.Routes, nf.RoutesErr = h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4})

	if n != nil && n.Backend.Type == config.BackendVXLAN {
		for _, l := range nf.Links {
			if l.Name == DeviceName(n) {
				nf.Neighs, nf.NeighErr = h.NeighList(l.Index, netlinkx.FamilyV4)
				nf.FDB, nf.FDBErr = h.FDBList(l.Index)
			}
		}
	}

	// The iptables back end is weftd's choice, made once for both families.
	var ipt masq.IPTablesVariant
	if n != nil && !n.EnableNFTables && sf.Err == nil && sf.Env.IPMasq {
		ipt = masq.DetectIPTables(ctx)
	}
	if n != nil && n.EnableIPv6 {
		nf.IPv6 = gatherIPv6(h, n, nf.Links, sf, ipt)
	}

	nf.Sysctls = map[string]string{}
	keys := append([]string{"net/ipv4/ip_forward", "net/ipv4/conf/all/rp_filter", "net/ipv4/conf/default/rp_filter"}, limitSysctls...)
	if n != nil && n.EnableIPv6 {
		keys = append(keys, "net/ipv6/conf/all/forwarding")
		if name := DeviceNameV6(n); name != "" && n.Backend.Type == config.BackendVXLAN {
			keys = append(keys, "net/ipv6/conf/"+name+"/accept_ra")
		}
	}
	for _, l := range nf.Links {
		keys = append(keys, "net/ipv4/conf/"+l.Name+"/rp_filter")
	}
	for _, k := range keys {
		if b, err := os.ReadFile(filepath.Join("/proc/sys", k)); err == nil {
			nf.Sysctls[k] = strings.TrimSpace(string(b))
		}
	}

	if _, ports := datapathSockets(n, nf.Links); len(ports) > 0 {
		for _, p := range ports {
			s, err := netlinkx.UDPSockets(uint16(p))
			if err != nil {
				nf.DatapathSocketsErr = err
				break
			}
			nf.DatapathSockets = append(nf.DatapathSockets, s...)
		}
	}

	if n != nil && sf.Err == nil && sf.Env.IPMasq {
		nf.Masq = gatherMasq(ctx, n.EnableNFTables, ipt)
	}
	return nf
}

// gatherIPv6 reads the IPv6 half of the datapath.
// ipt is the iptables back end, when it masquerades with iptables.
func gatherIPv6(h *netlinkx.Handle, n *config.Network, ls []Link, sf SubnetFileFacts, ipt masq.IPTablesVariant) *IPv6Facts {
	f := &IPv6Facts{}
	f.Routes, f.RoutesErr = h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV6})
	if name := DeviceNameV6(n); name != "" && n.Backend.Type == config.BackendVXLAN {
		for _, l := range ls {
			if l.Name == name {
				f.Neighs, f.NeighErr = h.NeighList(l.Index, netlinkx.FamilyV6)
				f.FDB, f.FDBErr = h.FDBList(l.Index)
			}
		}
	}
	if !n.EnableNFTables && sf.Err == nil && sf.Env.IPMasq {
		f.Masq = gatherIPTables(ipt, iptables.ProtocolIPv6)
	}
	return f
}

// gatherIPTables reads proto's nat chain WEFT-POSTRTG and its jump, on
// back end v.
func gatherIPTables(v masq.IPTablesVariant, proto iptables.Protocol) MasqFacts {
	m := MasqFacts{Checked: true, Tool: v.Command(proto)}
	ipt, err := v.New(proto)
	if err != nil {
		m.Err = err
		return m
	}
	return readMasqChain(ipt, m)
}

func links(h *netlinkx.Handle) ([]Link, error) {
	ls, err := h.LinkList()
	if err != nil {
		return nil, err
	}
	out := make([]Link, 0, len(ls))
	for _, l := range ls {
		a := l.Attrs()
		addrs, err := h.AddrList(l, netlinkx.FamilyAll)
		if err != nil && !netlinkx.IsNotFound(err) {
			return nil, err
		}
		out = append(out, Link{
			Name: a.Name, Index: a.Index, Kind: l.Type(), MTU: a.MTU, MAC: a.HardwareAddr,
			Up: a.Flags&net.FlagUp != 0, Addrs: addrs, GSOIPv4MaxSize: int(a.GSOIPv4MaxSize),
		})
	}
	return out, nil
}

func gatherMasq(ctx context.Context, nft bool, ipt masq.IPTablesVariant) MasqFacts {
	if nft {
		m := MasqFacts{Checked: true, Tool: "nftables"}
		t, err := knftables.New(knftables.InetFamily, masq.NFTTable)
		if err != nil {
			m.Err = err
			return m
		}
		if _, err := t.List(ctx, "chains"); err != nil {
			if !knftables.IsNotFound(err) {
				m.Err = err
			}
			return m
		}
		m.TableExists = true
		rules, err := t.ListRules(ctx, "postrouting")
		if err != nil && !knftables.IsNotFound(err) {
			m.Err = err
			return m
		}
		for _, r := range rules {
			if r.Comment != nil {
				m.Comments = append(m.Comments, *r.Comment)
			}
		}
		return m
	}
	return gatherIPTables(ipt, iptables.ProtocolIPv4)
}

// readMasqChain fills m with the nat table's WEFT-POSTRTG rules and
// whether POSTROUTING jumps to it.
func readMasqChain(ipt *iptables.IPTables, m MasqFacts) MasqFacts {
	var err error
	if m.ChainExists, err = ipt.ChainExists("nat", masq.ChainPostrouting); err != nil || !m.ChainExists {
		m.Err = err
		return m
	}
	if m.Rules, err = ipt.List("nat", masq.ChainPostrouting); err != nil {
		m.Err = err
		return m
	}
	post, err := ipt.List("nat", "POSTROUTING")
	if err != nil {
		m.Err = err
		return m
	}
	for _, r := range post {
		if strings.Contains(r, "-j "+masq.ChainPostrouting) {
			m.Jump = true
		}
	}
	return m
}

// AgentArgs returns the flags the process pid (a weftd) runs with, its
// command line without the program name: passed to doctor, they make it
// check what that agent does.
func AgentArgs(pid int) ([]string, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return nil, fmt.Errorf("weftd's command line: %w", err)
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if len(args) == 0 || args[0] == "" {
		return nil, fmt.Errorf("weftd's command line (pid %d): empty", pid)
	}
	return args[1:], nil
}
