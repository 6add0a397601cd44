// Package kubecp runs a real Kubernetes control plane, kube-apiserver and
// kube-controller-manager built by scripts/kube-bins.sh, against an etcd the
// caller gives: for weft's tests (through internal/kubetest) and for the
// lab's --store kube.
//
// The cluster is set up as a kubeadm cluster is where weft can tell: a CA
// and client certificates, RBAC and the Node authorizer enforced,
// NodeRestriction admission, service-account tokens from the TokenRequest
// API, privileged pods allowed (a CNI DaemonSet needs them), and the
// controller-manager's node IPAM giving each Node its podCIDR(s) from the
// cluster CIDR(s), each controller with its own service account. There is
// no kubelet or scheduler: Nodes are created through the API.
//
// Everything lives under Config.DataDir:
//
//	pki/ca.crt, ca.key          cluster CA (kept across starts)
//	pki/sa.key, sa.pub          service-account signing key pair (kept)
//	pki/apiserver.crt, .key     serving certificate (issued on each start)
//	admin.kubeconfig            client certificate in system:masters
//	controller-manager.kubeconfig
//	kube-apiserver.log, kube-controller-manager.log (appended)
package kubecp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/weft-net/weft/internal/atomicfile"
	"github.com/weft-net/weft/internal/pki"
)

// Binary names, in Config.BinDir.
const (
	APIServerBinary         = "kube-apiserver"
	ControllerManagerBinary = "kube-controller-manager"
)

// Defaults for a zero Config field.
const (
	DefaultEtcdPrefix   = "/registry"
	DefaultReadyTimeout = 2 * time.Minute
	// The issuer is what kubeadm sets; tokens name it in "iss".
	ServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"
)

// DefaultServiceCIDR is kubeadm's service network; DefaultClusterCIDR is
// flannel's default Network.
const (
	DefaultServiceCIDR = "10.96.0.0/12"
	DefaultClusterCIDR = "10.244.0.0/16"
)

// Controllers are the controller-manager's controllers kubecp runs: node
// IPAM (podCIDRs); the default ServiceAccount in each namespace and the
// kube-root-ca.crt ConfigMap a pod's token volume needs; namespace deletion.
// The node lifecycle controller is left out on purpose: without kubelets it
// would mark every Node NotReady and taint it.
const Controllers = "node-ipam-controller,serviceaccount-controller,root-ca-certificate-publisher-controller,namespace-controller"

// Config describes a control plane. Only BinDir, DataDir and EtcdServers
// are required.
type Config struct {
	BinDir  string // holds kube-apiserver and kube-controller-manager
	DataDir string // created if missing

	EtcdServers []string // client URLs, e.g. http://127.0.0.1:2379
	// EtcdPrefix is the API server's key prefix; DefaultEtcdPrefix when
	// empty. Two control planes with different prefixes share an etcd.
	EtcdPrefix string

	// Address is where the API server listens and what it advertises;
	// 127.0.0.1 when invalid. Port 0 picks a free port on Address, which
	// only works when the API server runs in the caller's network
	// namespace: a Command hook that moves it elsewhere needs a Port.
	Address netip.Addr
	Port    int
	// ServerIPs and ServerNames are also in the serving certificate, for
	// clients that reach the API server some other way. Address, the first
	// IP of each service CIDR, localhost and the kubernetes Service's names
	// always are.
	ServerIPs   []netip.Addr
	ServerNames []string

	// ServiceCIDRs: one, or one per family (dual stack); DefaultServiceCIDR
	// when empty.
	ServiceCIDRs []netip.Prefix
	// ClusterCIDRs are the pod networks node IPAM carves podCIDRs from
	// (flannel's Network, and IPv6Network for dual stack); one per family,
	// DefaultClusterCIDR when empty. The mask sizes are flannel's
	// SubnetLen and IPv6SubnetLen: 24 and 64 when zero.
	ClusterCIDRs         []netip.Prefix
	NodeCIDRMaskSizeIPv4 int
	NodeCIDRMaskSizeIPv6 int

	// Command makes the command that runs binary (a path in BinDir) with
	// args; exec.Command when nil. The lab wraps it in `ip netns exec`, and
	// may set SysProcAttr (Setsid, Pdeathsig). kubecp sets Stdout and
	// Stderr to the log file and, unless Setsid is set, a process group of
	// its own.
	Command func(binary string, args []string) *exec.Cmd
	// DialContext dials the API server for kubecp's own requests and for
	// the rest.Configs it returns; a plain dialer when nil. The lab dials
	// from inside its control namespace.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)

	// ReadyTimeout bounds Start: both servers up and a Node given a
	// podCIDR. DefaultReadyTimeout when zero.
	ReadyTimeout time.Duration
	Logger       *slog.Logger // slog.Default() when nil
}

// ControlPlane is a running control plane. Its methods may be called from
// several goroutines.
type ControlPlane struct {
	cfg       Config
	log       *slog.Logger
	url       string
	ca        *pki.CA
	adminPath string
	admin     *rest.Config

	mu    sync.Mutex
	procs []*process // in start order
}

// Process is one running binary of the control plane.
type Process struct {
	Name string // kube-apiserver or kube-controller-manager
	PID  int
	Log  string // its log file
}

// Start starts the API server, waits until /readyz answers 200, starts the
// controller-manager and waits until it gives a new Node a podCIDR (a Node
// named kubecp-probe-*, deleted again). On error nothing it started is left
// running.
func Start(ctx context.Context, cfg Config) (*ControlPlane, error) {
	t0 := time.Now()
	if err := cfg.complete(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.ReadyTimeout)
	defer cancel()
	c := &ControlPlane{cfg: cfg, log: cfg.Logger}
	if err := c.start(ctx); err != nil {
		if serr := c.Stop(); serr != nil {
			err = errors.Join(err, serr)
		}
		return nil, fmt.Errorf("kube control plane in %s: %w", cfg.DataDir, err)
	}
	c.log.Info("kube control plane ready", "url", c.url, "data_dir", cfg.DataDir, "took", time.Since(t0).Round(time.Millisecond))
	return c, nil
}

func (cfg *Config) complete() error {
	if cfg.BinDir == "" || cfg.DataDir == "" {
		return errors.New("kube control plane: BinDir and DataDir are required")
	}
	if err := CheckBinaries(cfg.BinDir); err != nil {
		return err
	}
	if len(cfg.EtcdServers) == 0 {
		return errors.New("kube control plane: no etcd servers")
	}
	if cfg.EtcdPrefix == "" {
		cfg.EtcdPrefix = DefaultEtcdPrefix
	}
	if !cfg.Address.IsValid() {
		cfg.Address = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return fmt.Errorf("kube control plane: port %d out of range", cfg.Port)
	}
	if len(cfg.ServiceCIDRs) == 0 {
		cfg.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix(DefaultServiceCIDR)}
	}
	if len(cfg.ClusterCIDRs) == 0 {
		cfg.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix(DefaultClusterCIDR)}
	}
	if cfg.NodeCIDRMaskSizeIPv4 == 0 {
		cfg.NodeCIDRMaskSizeIPv4 = 24
	}
	if cfg.NodeCIDRMaskSizeIPv6 == 0 {
		cfg.NodeCIDRMaskSizeIPv6 = 64
	}
	if err := checkFamilies("service CIDRs", cfg.ServiceCIDRs); err != nil {
		return err
	}
	if err := checkFamilies("cluster CIDRs", cfg.ClusterCIDRs); err != nil {
		return err
	}
	for _, p := range cfg.ClusterCIDRs {
		size := cfg.NodeCIDRMaskSizeIPv4
		if p.Addr().Is6() {
			size = cfg.NodeCIDRMaskSizeIPv6
		}
		if size < p.Bits() || size > p.Addr().BitLen() {
			return fmt.Errorf("kube control plane: node CIDR mask size %d does not fit cluster CIDR %s", size, p)
		}
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = DefaultReadyTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Command == nil {
		cfg.Command = func(bin string, args []string) *exec.Cmd { return exec.Command(bin, args...) }
	}
	return nil
}

// checkFamilies accepts one prefix, or one IPv4 and one IPv6, as the API
// server and node IPAM do.
func checkFamilies(what string, ps []netip.Prefix) error {
	for _, p := range ps {
		if !p.IsValid() || p.Addr().Zone() != "" {
			return fmt.Errorf("kube control plane: %s: invalid prefix %v", what, p)
		}
	}
	switch {
	case len(ps) == 1:
		return nil
	case len(ps) == 2 && ps[0].Addr().Is4() != ps[1].Addr().Is4():
		return nil
	}
	return fmt.Errorf("kube control plane: %s %v: want one, or one IPv4 and one IPv6", what, ps)
}

// CheckBinaries reports whether dir holds the control plane's binaries, and
// if not, how to get them.
func CheckBinaries(dir string) error {
	for _, b := range []string{APIServerBinary, ControllerManagerBinary} {
		fi, err := os.Stat(filepath.Join(dir, b))
		if err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			continue
		}
		return fmt.Errorf("no %s in %s: build the Kubernetes binaries with `make kube-bins` (scripts/kube-bins.sh; minutes the first time, cached by version), or point WEFT_KUBE_BIN_DIR at them", b, dir)
	}
	return nil
}

func (c *ControlPlane) start(ctx context.Context) error {
	cfg := &c.cfg
	pki := filepath.Join(cfg.DataDir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return err
	}
	var err error
	if c.ca, err = loadOrCreateCA(pki); err != nil {
		return err
	}
	saKey, saPub, err := loadOrCreateSAKey(pki)
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := servingCert(c.ca, cfg.servingIPs(), cfg.servingNames())
	if err != nil {
		return err
	}
	servingCert, servingKey := filepath.Join(pki, "apiserver.crt"), filepath.Join(pki, "apiserver.key")
	if err := atomicfile.Write(servingKey, keyPEM, 0o600); err != nil {
		return err
	}
	if err := atomicfile.Write(servingCert, certPEM, 0o644); err != nil {
		return err
	}
	files := apiserverFiles{
		caCert: filepath.Join(pki, "ca.crt"), servingCert: servingCert, servingKey: servingKey,
		saKey: saKey, saPub: saPub,
	}

	// A port found free may be taken before the API server binds it; a
	// new one then, as often as there is time.
	for attempt := 1; ; attempt++ {
		port := cfg.Port
		if port == 0 {
			if port, err = freePort(cfg.Address); err != nil {
				return err
			}
		}
		err = c.startAPIServer(ctx, port, files)
		if err == nil || cfg.Port != 0 || attempt == 3 || !errors.Is(err, errAddrInUse) {
			break
		}
		c.log.Warn("kube-apiserver port taken meanwhile; another", "port", port)
	}
	if err != nil {
		return err
	}
	return c.startControllerManager(ctx, files)
}

type apiserverFiles struct {
	caCert, servingCert, servingKey, saKey, saPub string
}

var errAddrInUse = errors.New("address already in use")

func (c *ControlPlane) startAPIServer(ctx context.Context, port int, f apiserverFiles) error {
	cfg := &c.cfg
	c.url = "https://" + net.JoinHostPort(cfg.Address.String(), strconv.Itoa(port))
	c.adminPath = filepath.Join(cfg.DataDir, "admin.kubeconfig")
	if err := c.ClientCertKubeconfig(c.adminPath, "kubernetes-admin", "system:masters"); err != nil {
		return err
	}
	admin, err := c.RESTConfig(c.adminPath)
	if err != nil {
		return err
	}
	// Tests create objects in bursts; client-go's default of 5/s would
	// make them wait for nothing.
	admin.QPS, admin.Burst = 100, 200
	c.admin = admin

	args := []string{
		"--etcd-servers=" + strings.Join(cfg.EtcdServers, ","),
		"--etcd-prefix=" + cfg.EtcdPrefix,
		"--bind-address=" + cfg.Address.String(),
		"--advertise-address=" + cfg.Address.String(),
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + f.servingCert,
		"--tls-private-key-file=" + f.servingKey,
		"--client-ca-file=" + f.caCert,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--service-cluster-ip-range=" + joinPrefixes(cfg.ServiceCIDRs),
		"--service-account-issuer=" + ServiceAccountIssuer,
		"--service-account-key-file=" + f.saPub,
		"--service-account-signing-key-file=" + f.saKey,
		"--profiling=false",
	}
	if cfg.Address.IsLoopback() {
		// The API server refuses to publish a loopback address as the
		// kubernetes Service's endpoint; with no pods to dial it, the
		// Service can do without one.
		args = append(args, "--endpoint-reconciler-type=none")
	}
	p, err := c.run(APIServerBinary, args)
	if err != nil {
		return err
	}
	hc, err := rest.HTTPClientFor(c.admin)
	if err != nil {
		return fmt.Errorf("kube-apiserver client: %w", err)
	}
	defer hc.CloseIdleConnections()
	var last string
	for {
		if code, body, err := get(ctx, hc, c.url+"/readyz"); err != nil {
			last = err.Error()
		} else if code == http.StatusOK {
			return nil
		} else {
			last = fmt.Sprintf("%d %s", code, body)
		}
		select {
		case <-p.done:
			c.forget(p)
			err := p.exitError()
			if strings.Contains(p.logTail(30), "address already in use") {
				err = fmt.Errorf("%w: %w", errAddrInUse, err)
			}
			return err
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver at %s not ready (%v; last /readyz: %s); end of %s:\n%s",
				c.url, context.Cause(ctx), last, p.logPath, p.logTail(30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *ControlPlane) startControllerManager(ctx context.Context, f apiserverFiles) error {
	cfg := &c.cfg
	kubeconfig := filepath.Join(cfg.DataDir, "controller-manager.kubeconfig")
	// The user the RBAC bootstrap policy knows; each controller then works
	// with its own service account's token, as in kubeadm's clusters.
	if err := c.ClientCertKubeconfig(kubeconfig, "system:kube-controller-manager"); err != nil {
		return err
	}
	var v4, v6 bool
	for _, p := range cfg.ClusterCIDRs {
		v4, v6 = v4 || p.Addr().Is4(), v6 || p.Addr().Is6()
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--root-ca-file=" + f.caCert,
		"--controllers=" + Controllers,
		"--allocate-node-cidrs=true",
		"--cluster-cidr=" + joinPrefixes(cfg.ClusterCIDRs),
		"--service-cluster-ip-range=" + cfg.ServiceCIDRs[0].String(),
		// Nothing to serve: its health is judged by what it does.
		"--secure-port=0",
	}
	if len(cfg.ServiceCIDRs) > 1 {
		args = append(args, "--secondary-service-cluster-ip-range="+cfg.ServiceCIDRs[1].String())
	}
	// The family-less flag is refused in a dual-stack cluster.
	switch {
	case v4 && v6:
		args = append(args,
			"--node-cidr-mask-size-ipv4="+strconv.Itoa(cfg.NodeCIDRMaskSizeIPv4),
			"--node-cidr-mask-size-ipv6="+strconv.Itoa(cfg.NodeCIDRMaskSizeIPv6))
	case v4:
		args = append(args, "--node-cidr-mask-size="+strconv.Itoa(cfg.NodeCIDRMaskSizeIPv4))
	default:
		args = append(args, "--node-cidr-mask-size="+strconv.Itoa(cfg.NodeCIDRMaskSizeIPv6))
	}
	p, err := c.run(ControllerManagerBinary, args)
	if err != nil {
		return err
	}
	return c.probeNodeIPAM(ctx, p)
}

// probeNodeIPAM creates a Node without podCIDR and waits until node IPAM
// gives it one: then the controller-manager is up and a Node the caller
// creates gets its podCIDR at once.
func (c *ControlPlane) probeNodeIPAM(ctx context.Context, kcm *process) error {
	cs, err := kubernetes.NewForConfig(c.admin)
	if err != nil {
		return err
	}
	name := "kubecp-probe-" + randomSuffix()
	nodes := cs.CoreV1().Nodes()
	if _, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create probe node %s: %w", name, err)
	}
	defer func() {
		// Bounded on its own: ctx may be what ended the wait.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := nodes.Delete(dctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			c.log.Warn("delete probe node", "node", name, "err", err)
		}
	}()
	for {
		n, err := nodes.Get(ctx, name, metav1.GetOptions{})
		if err == nil && len(n.Spec.PodCIDRs) == len(c.cfg.ClusterCIDRs) {
			return nil
		}
		select {
		case <-kcm.done:
			return kcm.exitError()
		case <-ctx.Done():
			return fmt.Errorf("kube-controller-manager gave probe node %s no podCIDR (%v); end of %s:\n%s",
				name, context.Cause(ctx), kcm.logPath, kcm.logTail(30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// run starts one binary and records it, so that Stop stops it whatever
// happens next.
func (c *ControlPlane) run(name string, args []string) (*process, error) {
	cmd := c.cfg.Command(filepath.Join(c.cfg.BinDir, name), args)
	p, err := startProcess(name, cmd, filepath.Join(c.cfg.DataDir, name+".log"))
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p, nil
}

// forget drops a process that has exited, so that Exited and Processes
// speak of the running ones only.
func (c *ControlPlane) forget(p *process) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, q := range c.procs {
		if q == p {
			c.procs = append(c.procs[:i], c.procs[i+1:]...)
			return
		}
	}
}

// Stop stops the controller-manager, then the API server (SIGTERM, then
// SIGKILL after 5s), and returns once both have exited. It may be called
// more than once.
func (c *ControlPlane) Stop() error {
	c.mu.Lock()
	procs := c.procs
	c.procs = nil
	c.mu.Unlock()
	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		if err := procs[i].stop(5 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Processes are the running binaries, for a caller that must find them
// again after it exits (the lab writes their pids).
func (c *ControlPlane) Processes() []Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Process
	for _, p := range c.procs {
		out = append(out, Process{Name: p.name, PID: p.pid(), Log: p.logPath})
	}
	return out
}

// Exited returns the error of a binary that has exited on its own, or nil
// while both run.
func (c *ControlPlane) Exited() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.procs {
		if p.exited() {
			return p.exitError()
		}
	}
	return nil
}

// URL is the API server's address, https://<Address>:<port>.
func (c *ControlPlane) URL() string { return c.url }

// DataDir holds the PKI, the kubeconfigs and the logs.
func (c *ControlPlane) DataDir() string { return c.cfg.DataDir }

// CACert is the cluster CA certificate, PEM.
func (c *ControlPlane) CACert() []byte { return c.ca.CertPEM() }

// AdminKubeconfig is the path of a kubeconfig with full rights (group
// system:masters), for kubectl --kubeconfig and for tests.
func (c *ControlPlane) AdminKubeconfig() string { return c.adminPath }

// AdminConfig is a client config with full rights; each call returns a
// copy the caller may change.
func (c *ControlPlane) AdminConfig() *rest.Config { return rest.CopyConfig(c.admin) }

// ClusterCIDRs are the networks podCIDRs come from.
func (c *ControlPlane) ClusterCIDRs() []netip.Prefix {
	return append([]netip.Prefix(nil), c.cfg.ClusterCIDRs...)
}

func (cfg *Config) servingIPs() []netip.Addr {
	ips := []netip.Addr{cfg.Address}
	for _, p := range cfg.ServiceCIDRs {
		// The kubernetes Service's ClusterIP, which pods dial.
		ips = append(ips, p.Masked().Addr().Next())
	}
	ips = append(ips, netip.AddrFrom4([4]byte{127, 0, 0, 1}))
	return append(ips, cfg.ServerIPs...)
}

func (cfg *Config) servingNames() []string {
	names := []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"}
	return append(names, cfg.ServerNames...)
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.Masked().String()
	}
	return strings.Join(s, ",")
}

// freePort is a TCP port free on addr at the time of asking.
func freePort(addr netip.Addr) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(addr.String(), "0"))
	if err != nil {
		return 0, fmt.Errorf("pick a port on %s: %w", addr, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func get(ctx context.Context, hc *http.Client, url string) (int, string, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	return resp.StatusCode, strings.TrimSpace(string(body)), err
}

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b) // never fails (crypto/rand crashes first)
	return hex.EncodeToString(b)
}
