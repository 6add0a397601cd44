// Package daemon is weftd: it chooses the underlay interface, gets the
// network config, leases a subnet, builds the backend and then keeps the
// datapath converged to the lease set, renewing its lease and serving
// health and metrics, until its context ends. It leaves the datapath in
// place on exit so that pods keep talking across a restart.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"runtime/debug"
	"sync"
	"time"

	"github.com/weft-net/weft/internal/agentopts"
	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/backoff"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/admit"
	"github.com/weft-net/weft/internal/lease/etcdstore"
	"github.com/weft-net/weft/internal/lease/kubestore"
	"github.com/weft-net/weft/internal/masq"
	"github.com/weft-net/weft/internal/netif"
	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/readyfile"
	"github.com/weft-net/weft/internal/subnetenv"
)

// Options is what Run needs: the agent's settings and what only the
// running process has. Zero durations and empty paths of the settings take
// agentopts' defaults.
type Options struct {
	agentopts.Options

	Version string
	Logger  *slog.Logger
	// Netlink is the namespace to program; nil means the process's own.
	Netlink *netlinkx.Handle
}

const storeTimeout = 30 * time.Second // bound on one store call

func (o Options) withDefaults() Options {
	o.Options = o.Options.WithDefaults()
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// daemon is one run of weftd.
type daemon struct {
	o       Options
	log     *slog.Logger
	wg      *sync.WaitGroup // the goroutines Run waits for
	store   *storeHandle
	h       *netlinkx.Handle
	ext     netif.External
	health  *health
	metrics *metrics
	sd      *systemd
	start   time.Time

	net   *config.Network
	be    backend.Backend
	attrs lease.Attrs
	keep  *masq.Keeper
	holes *blackholeKeeper // --ip-blackhole-route

	own      lease.Lease
	gotOwn   time.Time // when own was acquired or last renewed
	leases   leaseSet  // as the watch reported them
	admit    admit.Set // what of leases the datapath may program
	admitted bool      // admit was Reset for own and the network
	refusals backend.SkipLog
	// A periodic pass takes admit's admitted set as Updates left it
	// rather than judge every lease again (at 5,000 leases a Reset costs
	// 10-30 ms on the event loop). admitOwn is own as of the last Reset;
	// unadmitted counts the lease changes applied since that admit has
	// not seen; resetsSkipped, the passes that took the kept set.
	admitOwn      lease.Lease
	unadmitted    int
	resetsSkipped int
	// watchKernelOnce starts following the kernel's changes (repair.go).
	watchKernelOnce func()
	leaseHeld       bool // own is ours: acquired, not lost or expired since
	configured      bool // Configure and subnet.env done for own
	ready           bool // lease held and a full reconcile succeeded since
	everReady       bool
}

// Run runs weftd until ctx ends, then returns nil. It returns an error for
// what retrying cannot fix: a store it cannot open, no
// usable interface, a health port in use, a backend that cannot be built.
func Run(ctx context.Context, o Options) (err error) {
	o = o.withDefaults()
	d := &daemon{
		o: o, log: o.Logger, start: time.Now(), leases: leaseSet{},
		health:  newHealth(max(3*o.ResyncPeriod, 2*time.Minute)),
		metrics: newMetrics(),
	}
	d.health.log = o.Logger
	d.health.marker = readyfile.Path(o.SubnetFile)
	// Three missed resyncs make the marker stale.
	d.health.markFor = max(3*o.ResyncPeriod, 30*time.Second)
	// A marker left by the previous agent would vouch for this one before
	// it has programmed anything.
	if err := readyfile.Clear(d.health.marker); err != nil {
		d.log.Warn("clearing the previous agent's readiness marker", "err", err)
	}
	d.sd = newSystemd(o.Logger)
	d.health.onNotReady = func(reason string) { d.sd.status("not ready: " + reason) }
	// Shut down in order: stop the goroutines, then close what they use.
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var closers []func()
	defer func() {
		// A run that ends to start again with a new config is no stop.
		if !errors.Is(err, ErrConfigChanged) {
			d.sd.stopping()
		}
		cancel()
		wg.Wait()
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()
	d.sd.startWatchdog(ctx, &wg, func() bool { ok, _ := d.health.live(); return ok })

	// The store first, as flanneld makes its subnet manager before
	// anything else.
	store, err := openStore(ctx, o, func(why string) { d.health.notReady("acquiring a lease: " + why) })
	if err != nil {
		return err
	}
	closers = append(closers, store.close)
	d.store = store
	if p, ok := store.Store.(pinger); ok {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.probeStore(ctx, p)
		}()
	}
	if store.kube != nil {
		// The node's node-public-ip(v6) annotations win over
		// --public-ip(v6), before the interface is chosen (flanneld
		// main.go:306-312).
		v4, v6, err := store.kube.NodePublicIPs(ctx)
		if err != nil {
			return err
		}
		if v4.IsValid() {
			d.log.Info("public IP from the node's annotation", "public_ip", v4, "was", d.o.Iface.PublicIP)
			d.o.Iface.PublicIP = v4
		}
		if v6.IsValid() {
			d.log.Info("public IPv6 from the node's annotation", "public_ipv6", v6, "was", d.o.Iface.PublicIPv6)
			d.o.Iface.PublicIPv6 = v6
		}
	}

	if o.HealthzPort != 0 {
		_, wait, err := serveHealth(ctx, o.HealthzIP, o.HealthzPort, d.health, d.metrics, d.log)
		if err != nil {
			return err
		}
		closers = append(closers, wait)
	}

	d.h = o.Netlink
	if d.h == nil {
		h, err := netlinkx.New()
		if err != nil {
			return err
		}
		closers = append(closers, h.Close)
		d.h = h
	}
	err = d.run(ctx, &wg)
	if d.be != nil {
		cancel()
		wg.Wait()
		if cerr := d.be.Close(); cerr != nil {
			d.log.Warn("backend close", "err", cerr)
		}
	}
	return err
}

// openStore chooses the lease store the options ask for.
func openStore(ctx context.Context, o Options, waiting func(why string)) (*storeHandle, error) {
	if o.KubeSubnetMgr {
		ko := kubestore.Options{
			APIURL: o.KubeAPIURL, Kubeconfig: o.KubeconfigFile,
			AnnotationPrefix: o.KubeAnnotationPrefix, NetConfigPath: o.NetConfigPath,
			SetNodeNetworkUnavailable: o.SetNodeNetworkUnavailable,
			UserAgent:                 "weftd/" + o.Version,
			Logger:                    o.Logger,
			Waiting:                   waiting,
		}
		// NODE_NAME (or POD_NAME and POD_NAMESPACE), EVENT_QUEUE_DEPTH and
		// CONT_WHEN_CACHE_NOT_READY, as the DaemonSet sets them.
		if err := ko.FromEnv(os.Getenv); err != nil {
			return nil, fmt.Errorf("--kube-subnet-mgr: %w", err)
		}
		st, err := kubestore.Open(ctx, ko)
		if err != nil {
			return nil, fmt.Errorf("--kube-subnet-mgr: %w", err)
		}
		o.Logger.Info("leases in the Kubernetes API", "node", st.NodeName(), "annotation_prefix", st.Keys().Prefix, "net_config", o.NetConfigPath)
		// Acquire waits for the controller-manager to give the node a
		// podCIDR, which takes as long as it takes: no bound.
		return &storeHandle{Store: st, close: st.Close, kube: st}, nil
	}
	cli, err := etcdstore.Connect(ctx, etcdstore.ClientOptions(o.Etcd))
	if err != nil {
		return nil, err
	}
	st := etcdstore.New(cli, etcdstore.Options{Prefix: o.EtcdPrefix, TTL: o.LeaseTTL, Logger: o.Logger})
	return &storeHandle{Store: st, close: func() { cli.Close() }, acquireTimeout: storeTimeout}, nil
}

// storeHandle is the store Run uses, with what closes it and what the
// daemon does differently per store.
type storeHandle struct {
	lease.Store
	close func()
	// acquireTimeout bounds one Acquire; 0 for none.
	acquireTimeout time.Duration
	// kube is the Kubernetes store, nil with etcd.
	kube *kubestore.Store
}

func (d *daemon) run(ctx context.Context, wg *sync.WaitGroup) (err error) {
	d.wg = wg
	n, ok := d.waitConfig(ctx)
	if !ok {
		return nil
	}
	d.net = n
	d.metrics.info.WithLabelValues(n.Backend.Type, d.o.Version).Set(1)

	// The interface serves the config's families, as flanneld chooses it
	// after reading the config (main.go:320-369): dual stack needs an
	// interface with both an IPv4 and an IPv6 address.
	stack, err := netif.StackOf(n.EnableIPv4, n.EnableIPv6)
	if err != nil {
		return fmt.Errorf("network config: %w", err)
	}
	ext, err := netif.SelectOn(d.h, d.o.Iface, stack, d.log)
	if err != nil {
		return fmt.Errorf("choose the external interface for %s: %w", stack, err)
	}
	d.ext = ext
	d.log.Info("using interface", "iface", ext.Name, "stack", stack, "addr", ext.Addr, "public_ip", ext.PublicIP,
		"addr6", ext.Addr6, "public_ipv6", ext.PublicIPv6, "mtu", ext.MTU, "subnet", ext.Subnet, "subnet6", ext.Subnet6)

	params := backend.Params{Network: n, Ext: d.ext}
	if d.store.kube != nil && n.Backend.Type == config.BackendVXLAN {
		// A restarted node keeps the VtepMACs the others route to.
		v4, v6, err := d.store.kube.VtepMACs(ctx)
		if err != nil {
			d.log.Warn("cannot read the VtepMAC this node published; the device keeps or gets its own", "err", err)
		}
		params.VtepMAC, params.VtepMACv6 = v4, v6
	}
	be, err := newBackend(n.Backend.Type, params, d.h, d.log)
	if err != nil {
		return fmt.Errorf("backend %s: %w", n.Backend.Type, err)
	}
	d.be = be // closed by Run
	if err := registerBackendMetrics(d.metrics.reg, be); err != nil {
		return fmt.Errorf("backend %s: %w", n.Backend.Type, err)
	}
	typ, data, err := be.LeaseAttrs(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("backend %s: prepare: %w", n.Backend.Type, err)
	}
	d.attrs = lease.Attrs{PublicIP: d.ext.PublicIP, BackendType: typ, BackendData: data}
	if !n.EnableIPv4 {
		d.attrs.PublicIP = netip.Addr{} // written as 0.0.0.0, as flannel's IPv6-only lease
	}
	if n.EnableIPv6 && d.ext.PublicIPv6.IsValid() {
		// --public-ipv6, else the interface's IPv6 address (ExtV6Addr).
		v6 := d.ext.PublicIPv6
		d.attrs.PublicIPv6 = &v6
		if vb, ok := be.(backend.V6Backend); ok {
			d.attrs.BackendV6Data = vb.LeaseV6Data()
		}
	}
	d.log.Info("backend ready", "type", n.Backend.Type, "backend_data", string(data), "backend_v6_data", string(d.attrs.BackendV6Data))

	// Watch first: the snapshot tells whether our lease already exists,
	// and the lease set is complete when the lease is in hand. A store's
	// Watch retries what can be retried on its own; an error it returns
	// ends the run.
	events := make(chan batch, 64)
	ctx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	if d.store.kube != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.watchNetConf(ctx, n, stopRun)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := d.watch(ctx, events); err != nil && ctx.Err() == nil {
			stopRun(&watchError{err})
		}
	}()
	defer func() {
		var we *watchError
		switch cause := context.Cause(ctx); {
		case errors.As(cause, &we):
			err = we
		case errors.Is(cause, ErrConfigChanged):
			err = cause
		}
	}()
	d.health.notReady("listing leases")
	if !d.waitSnapshot(ctx, events) {
		return nil
	}

	if d.o.IPMasq || d.o.ForwardRules {
		m, err := masq.New(ctx, n.EnableNFTables)
		switch {
		case err != nil && d.o.IPMasq:
			return fmt.Errorf("--ip-masq: %w", err)
		case err != nil:
			d.log.Warn("forward rules disabled: no usable firewall tool", "err", err)
		default:
			if ipt, ok := m.(*masq.IPTables); ok {
				v := ipt.Variant()
				d.log.Info("firewall rules with "+v.String(), "why", v.Why)
			}
			d.keep = masq.NewKeeper(m, d.o.IPTablesResync, d.log)
			wg.Add(1)
			go func() {
				defer wg.Done()
				d.keep.Run(ctx)
			}()
		}
	}

	if d.o.BlackholeRoute {
		d.holes = newBlackholeKeeper(d.h, d.o.IPTablesResync, d.log)
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.holes.Run(ctx)
		}()
	}

	hint := d.readHint()
	d.health.notReady("acquiring a lease")
	if !d.acquireBlocking(ctx, hint) {
		return nil
	}
	// The kernel is watched from the first full reconcile on: the
	// notifications of programming thousands of leases would only cost
	// CPU while it runs.
	repairs := make(chan string, 1)
	d.watchKernelOnce = sync.OnceFunc(func() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.watchKernel(ctx, repairs)
		}()
	})
	return d.loop(ctx, events, repairs)
}

// configSource names where the config is read from, for logs.
func (d *daemon) configSource() string {
	switch {
	case d.o.KubeSubnetMgr:
		return d.o.NetConfigPath
	case d.o.NetConfigFile != "":
		return d.o.NetConfigFile
	}
	return "etcd key " + d.o.EtcdPrefix + "/config"
}

// waitConfig reads and parses the network config until it is valid. A
// missing or invalid config is logged (once per distinct error) and read
// again every ConfigRetry: weftd never exits over it. A store that does not
// answer is asked again within a second: a node that starts during an
// outage is to be routed within a second or two of the store's return.
func (d *daemon) waitConfig(ctx context.Context) (*config.Network, bool) {
	lastErr := ""
	for attempt := 0; ; attempt++ {
		d.health.alive()
		n, warnings, err := d.readConfig(ctx)
		if err == nil {
			for _, w := range warnings {
				d.log.Warn("network config: "+w, "source", d.configSource())
			}
			d.log.Info("network config", "source", d.configSource(), "network", n.Network, "subnet_len", n.SubnetLen,
				"ipv6_network", n.IPv6Network, "backend", n.Backend.Type)
			return n, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		d.metrics.configErrs.Inc()
		d.health.notReady("waiting for a valid network config: " + err.Error())
		var se *storeError
		storeDown := errors.As(err, &se)
		if msg := err.Error(); msg != lastErr {
			lastErr = msg
			switch {
			case storeDown:
				d.log.Warn("cannot read the network config: the store does not answer; retrying", "source", d.configSource(), "err", se.err, "retry_within", time.Second)
			case errors.Is(err, lease.ErrNoConfig) || errors.Is(err, os.ErrNotExist):
				d.log.Warn("no network config yet; waiting for one", "source", d.configSource(), "err", err, "retry_every", d.o.ConfigRetry)
			default:
				d.log.Error("network config unusable; waiting for a corrected one", "source", d.configSource(), "err", err, "retry_every", d.o.ConfigRetry)
			}
		}
		wait := d.o.ConfigRetry
		if storeDown {
			wait = min(wait, backoff.Jittered(attempt, 250*time.Millisecond, time.Second))
		}
		select {
		case <-ctx.Done():
			return nil, false
		case <-time.After(wait):
		}
	}
}

func (d *daemon) readConfig(ctx context.Context) (*config.Network, []string, error) {
	var raw []byte
	var err error
	if d.o.NetConfigFile != "" {
		raw, err = os.ReadFile(d.o.NetConfigFile)
	} else {
		sctx, cancel := context.WithTimeout(ctx, storeTimeout)
		raw, err = d.store.NetworkConfig(sctx)
		cancel()
		if err != nil && !errors.Is(err, lease.ErrNoConfig) {
			return nil, nil, &storeError{err}
		}
	}
	if err != nil {
		return nil, nil, err
	}
	n, warnings, err := config.Parse(raw)
	if err == nil && d.store.kube == nil {
		// Refused as a config error, named and waited on like the others.
		err = etcdstore.CheckNetwork(n)
	}
	if err != nil {
		return nil, warnings, err
	}
	return n, warnings, nil
}

// watch runs the store's watch until ctx ends. The first call of fn is
// the snapshot.
func (d *daemon) watch(ctx context.Context, out chan<- batch) error {
	first := true
	return d.store.Watch(ctx, func(evs []lease.Event) {
		b := batch{events: evs, snapshot: first}
		first = false
		select {
		case out <- b:
		case <-ctx.Done():
		}
	})
}

// ErrConfigChanged ends Run when the net-conf file changed to another
// valid config: weftd runs again with it, and the datapath, left in place
// in between, converges to the new config like after a restart.
var ErrConfigChanged = errors.New("network config changed")

// watchNetConf follows the Kubernetes store's net-conf file (a ConfigMap
// update rewrites it) and stops the run when it changes to a valid config
// that differs from running's. An invalid one is refused with an error and
// the running config stays.
func (d *daemon) watchNetConf(ctx context.Context, running *config.Network, stop context.CancelCauseFunc) {
	err := d.store.kube.WatchNetworkConfig(ctx, func(raw []byte) {
		n, _, err := config.Parse(raw)
		switch {
		case err != nil:
			d.metrics.configErrs.Inc()
			d.log.Error("net-conf changed to a config weftd cannot use; keeping the running one", "path", d.o.NetConfigPath, "err", err)
		case sameEffect(n, running):
			d.log.Info("net-conf rewritten with the running config", "path", d.o.NetConfigPath)
		default:
			d.log.Info("net-conf changed; starting again with it", "path", d.o.NetConfigPath, "network", n.Network, "backend", n.Backend.Type)
			stop(fmt.Errorf("%w: %s", ErrConfigChanged, d.o.NetConfigPath))
		}
	})
	if err != nil && ctx.Err() == nil {
		d.log.Warn("cannot follow changes of the net-conf file; weftd applies one when it restarts", "path", d.o.NetConfigPath, "err", err)
	}
}

// sameEffect reports whether two configs ask for the same datapath: their
// text (Backend.Raw) may differ in spacing.
func sameEffect(a, b *config.Network) bool {
	x, y := *a, *b
	x.Backend.Raw, y.Backend.Raw = nil, nil
	return reflect.DeepEqual(x, y)
}

// complete tells the store, once, that this node's network is up: with
// the Kubernetes store and --set-node-network-unavailable, the node's
// NetworkUnavailable condition becomes False. It retries until it is
// done; flanneld tries once and leaves the node unschedulable if that
// attempt fails.
func (d *daemon) complete(ctx context.Context) {
	if d.store.kube == nil || !d.o.SetNodeNetworkUnavailable {
		return
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for attempt := 0; ; attempt++ {
			sctx, cancel := context.WithTimeout(ctx, storeTimeout)
			err := d.store.kube.Complete(sctx)
			cancel()
			if err == nil {
				d.log.Info("node condition NetworkUnavailable=False set", "node", d.store.kube.NodeName())
				return
			}
			if ctx.Err() != nil {
				return
			}
			wait := backoff.Jittered(attempt, time.Second, 30*time.Second)
			d.log.Warn("cannot set the node's NetworkUnavailable condition; retrying", "err", err, "retry_in", wait.Round(time.Millisecond))
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
	}()
}

// watchError is a lease watch that stopped for good.
type watchError struct{ err error }

// storeError is a store that failed to answer (timeout, refused, auth),
// as opposed to a config it returned that does not parse.
type storeError struct{ err error }

func (e *storeError) Error() string { return "lease store: " + e.err.Error() }
func (e *storeError) Unwrap() error { return e.err }

func (e *watchError) Error() string { return "lease watch: " + e.err.Error() }
func (e *watchError) Unwrap() error { return e.err }

// waitSnapshot takes the watch's first batch into the lease set.
func (d *daemon) waitSnapshot(ctx context.Context, events <-chan batch) bool {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			d.health.alive() // the store watch retries on its own
		case b := <-events:
			d.applyBatches(drain(events, b))
			return true
		}
	}
}

// readHint returns the subnets of the previous run's subnet.env.
func (d *daemon) readHint() lease.Hint {
	env, err := subnetenv.Read(d.o.SubnetFile)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return lease.Hint{}
	case err != nil:
		d.log.Warn("ignoring the previous subnet file", "err", err)
		return lease.Hint{}
	}
	h := lease.Hint{Subnet: env.Subnet.Masked(), IPv6Subnet: env.IPv6Subnet.Masked()}
	d.log.Debug("previous subnet file", "path", d.o.SubnetFile, "subnet", h.Subnet, "ipv6_subnet", h.IPv6Subnet)
	return h
}

// acquireBlocking acquires the lease at start, retrying until it succeeds
// or ctx ends.
func (d *daemon) acquireBlocking(ctx context.Context, hint lease.Hint) bool {
	for attempt := 0; ; attempt++ {
		d.health.alive()
		wait, err := d.acquire(ctx, hint, attempt)
		if err == nil {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
		}
	}
}

// acquire makes one attempt to get our lease. On failure it logs and
// returns how long to wait before the next attempt.
func (d *daemon) acquire(ctx context.Context, hint lease.Hint, attempt int) (time.Duration, error) {
	prev, reused := d.leases.holder(d.attrs)
	sctx, cancel := ctx, context.CancelFunc(func() {})
	if d.store.acquireTimeout > 0 {
		sctx, cancel = context.WithTimeout(ctx, d.store.acquireTimeout)
	}
	l, err := d.store.Acquire(sctx, d.net, d.attrs, hint)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return 0, err
		}
		if errors.Is(err, lease.ErrPoolExhausted) {
			attrs := []any{"err", err}
			// Both families' ranges: either may be the full one.
			if d.net.EnableIPv4 {
				attrs = append(attrs, "network", d.net.Network, "subnet_min", d.net.SubnetMin, "subnet_max", d.net.SubnetMax)
			}
			if d.net.EnableIPv6 {
				attrs = append(attrs, "ipv6_network", d.net.IPv6Network, "ipv6_subnet_min", d.net.IPv6SubnetMin, "ipv6_subnet_max", d.net.IPv6SubnetMax)
			}
			d.log.Error("cannot acquire a lease: the subnet pool is exhausted; retrying", append(attrs, "retry_in", time.Minute)...)
			d.notReadyUnlessHeld("subnet pool exhausted: " + err.Error())
			return backoff.Jittered(0, time.Minute, time.Minute), err
		}
		// Short: a node that starts while the store is away is to be
		// routed within a second or two of the store's return.
		wait := backoff.Jittered(attempt, 250*time.Millisecond, time.Second)
		d.log.Warn("cannot acquire a lease; retrying", "err", err, "retry_in", wait.Round(time.Millisecond))
		d.notReadyUnlessHeld("acquiring a lease: " + err.Error())
		return wait, err
	}
	how := "new"
	switch {
	case reused && prev.Key() == l.Key():
		how = "reused"
	case hint.Subnet.IsValid() && hint.Subnet == l.Subnet || !hint.Subnet.IsValid() && hint.IPv6Subnet.IsValid() && hint.IPv6Subnet == l.IPv6Subnet:
		how = "hint"
	}
	if d.own.Key() != l.Key() {
		d.subnetChanged(hint, l)
		d.configured = false
	}
	d.own, d.gotOwn, d.leaseHeld = l, time.Now(), true
	d.leases[l.Key()] = l
	d.log.Info(fmt.Sprintf("subnet %s (%s)", leaseName(l), how), "expires", expiry(l))
	d.metrics.leaseExpiry.Set(unixSeconds(l.Expiration))
	return 0, nil
}

// subnetChanged says loudly that this node's subnet changed, when pods may
// hold addresses in the old one: the subnet held until now, or at start
// the one the previous run wrote to subnet.env. Those pods keep their
// addresses and lose connectivity until they are restarted; issue 11 found
// this happening silently after a change of Network.
func (d *daemon) subnetChanged(hint lease.Hint, l lease.Lease) {
	old := d.own.Subnet
	if !d.configured {
		old = hint.Subnet
	}
	if !old.IsValid() || old == l.Subnet {
		return
	}
	why := "the old subnet was taken by another node or deleted"
	if d.net.Network.IsValid() && !d.net.Network.Contains(old.Addr()) {
		why = fmt.Sprintf("the old subnet is outside the network config's Network %s", d.net.Network)
	}
	d.metrics.subnetChanges.Inc()
	d.log.Error("this node's subnet changed: pods with addresses in the old one lose connectivity until they are recreated",
		"old", old, "new", leaseName(l), "why", why,
		"fix", "drain the node (kubectl drain) before changing Network or deleting its lease; see README, Changing the network")
}

// notReadyUnlessHeld reports reason on /readyz unless a lease is still
// held: a store that is briefly unreachable does not stop a node whose
// lease has not expired from serving pods.
func (d *daemon) notReadyUnlessHeld(reason string) {
	if !d.leaseHeld {
		d.health.notReady(reason)
	}
}

// dropLease marks own as no longer ours.
func (d *daemon) dropLease(reason string) {
	d.leaseHeld, d.ready = false, false
	d.health.notReady(reason)
}

func leaseName(l lease.Lease) string {
	switch {
	case l.Subnet.IsValid() && l.IPv6Subnet.IsValid():
		return l.Subnet.String() + " and " + l.IPv6Subnet.String()
	case l.Subnet.IsValid():
		return l.Subnet.String()
	default:
		return l.IPv6Subnet.String()
	}
}

func expiry(l lease.Lease) string {
	if l.Reservation() {
		return "never (reservation)"
	}
	return l.Expiration.Format(time.RFC3339)
}

func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

// setUp configures the datapath for our lease and writes subnet.env.
func (d *daemon) setUp(ctx context.Context) error {
	pod, err := d.be.Configure(ctx, d.own)
	if err != nil {
		return fmt.Errorf("configure %s for %s: %w", d.net.Backend.Type, leaseName(d.own), err)
	}
	env := subnetenv.Env{MTU: pod.MTU, IPMasq: d.o.IPMasq, GSOIPv4MaxSize: pod.GSOIPv4MaxSize}
	if d.net.EnableIPv4 && d.own.Subnet.IsValid() {
		env.Network = d.net.Network
		env.Subnet = netip.PrefixFrom(lease.FirstIP(d.own.Subnet), d.own.Subnet.Bits())
	}
	if d.net.EnableIPv6 && d.own.IPv6Subnet.IsValid() {
		env.IPv6Network = d.net.IPv6Network
		env.IPv6Subnet = netip.PrefixFrom(lease.FirstIP(d.own.IPv6Subnet), d.own.IPv6Subnet.Bits())
	}
	if err := subnetenv.Write(d.o.SubnetFile, env); err != nil {
		return err
	}
	d.log.Info("datapath configured", "backend", d.net.Backend.Type, "mtu", pod.MTU, "subnet_file", d.o.SubnetFile)
	if pod.GSOIPv4MaxSize > 0 {
		d.log.Info("pods get BIG TCP: the underlay takes large GSO packets", "device", d.ext.Name, "gso_ipv4_max_size", pod.GSOIPv4MaxSize)
	}
	if d.keep != nil {
		d.keep.Set(masq.Config{
			Network: env.Network, Subnet: maskedOr(env.Subnet),
			IPv6Network: env.IPv6Network, IPv6Subnet: maskedOr(env.IPv6Subnet),
			Masquerade: d.o.IPMasq, NoFullyRandom: d.o.IPMasqFullyRandomDisable, Forward: d.o.ForwardRules,
		})
	}
	if d.holes != nil {
		var own []netip.Prefix
		for _, p := range []netip.Prefix{env.Subnet, env.IPv6Subnet} {
			if p.IsValid() {
				own = append(own, p.Masked())
			}
		}
		d.holes.Set(own)
	}
	d.configured = true
	return nil
}

func maskedOr(p netip.Prefix) netip.Prefix {
	if !p.IsValid() {
		return p
	}
	return p.Masked()
}

// applyBatches folds watch batches into the lease set and reports whether
// our own lease was lost. A snapshot replaces the set and asks for a full
// reconcile; otherwise evs are the events, in order.
func (d *daemon) applyBatches(bs []batch) (full, lost bool, evs []lease.Event) {
	for _, b := range bs {
		if b.snapshot {
			d.leases = leaseSet{}
			full = true
		}
		evs = append(evs, b.events...)
		// Rendering 5,000 lines nobody reads would cost a snapshot dearly.
		if d.log.Enabled(context.Background(), slog.LevelDebug) {
			for _, ev := range b.events {
				d.log.Debug("lease "+ev.Type.String(), "subnet", leaseName(ev.Lease), "public_ip", ev.Lease.Attrs.PublicIP, "backend", ev.Lease.Attrs.BackendType)
			}
		}
		if d.leases.apply(b.events, d.own) {
			lost = true
		}
		// Until admitEvents or a Reset sees them; a snapshot only a Reset.
		d.unadmitted += len(b.events)
		if b.snapshot {
			d.unadmitted++
		}
	}
	d.metrics.leases.Set(float64(len(d.leases)))
	return full, lost, evs
}

// How soon after a kernel change a repair runs, and how often at most.
const (
	repairDebounce = 50 * time.Millisecond
	repairEvery    = 500 * time.Millisecond
)

// loop is the steady state: events, periodic full reconciles, renewals.
func (d *daemon) loop(ctx context.Context, events <-chan batch, repairs <-chan string) error {
	resync := time.NewTicker(d.o.ResyncPeriod)
	defer resync.Stop()
	// retry fires a full reconcile (or set-up) sooner than resync after
	// an error; lease fires renewal or re-acquisition.
	retry := time.NewTimer(0)
	defer retry.Stop()
	leaseT := time.NewTimer(time.Hour)
	defer leaseT.Stop()
	// repairT fires a full reconcile shortly after the kernel lost part
	// of the datapath: long enough for a burst of deletions (a device and
	// its routes) to end, and at most every repairEvery.
	repairT := time.NewTimer(time.Hour)
	repairT.Stop()
	var repairWhy string
	var lastRepair time.Time
	schedule := func(t *time.Timer, in time.Duration) {
		t.Stop()
		select {
		case <-t.C:
		default:
		}
		t.Reset(max(in, 0))
	}
	noRenew := func() { schedule(leaseT, 1<<62) }
	scheduleRenew := func() {
		at := renewAt(d.gotOwn, d.own.Expiration, d.o.RenewMargin)
		if at.IsZero() {
			noRenew()
			return
		}
		d.log.Debug("lease renewal scheduled", "at", at.Format(time.RFC3339))
		schedule(leaseT, time.Until(at))
	}
	scheduleRenew()

	needFull, failures := true, 0
	needAcquire, leaseAttempt := false, 0
	// The datapath keeps being reconciled while the lease is being
	// re-acquired: the other nodes' routes stay right, and own is kept as
	// last held until a new lease replaces it. pass, when set, is a full
	// pass whose kernel state was read ahead.
	reconcileWith := func(full bool, pass fullPass) {
		if err := d.reconcile(ctx, full || needFull, pass); err != nil {
			if ctx.Err() != nil {
				return
			}
			needFull = true
			wait := backoff.Jittered(failures, 500*time.Millisecond, d.o.ResyncPeriod)
			failures++
			schedule(retry, wait)
			return
		}
		needFull, failures = false, 0
		// A retry still pending (the first pass at start, or one after
		// a failure) would only repeat this one: at 5,000 leases, tens of
		// milliseconds that an event arriving then waits for.
		retry.Stop()
	}
	reconcile := func(full bool) { reconcileWith(full, nil) }

	// The periodic full pass reads the kernel off the loop when the
	// backend can (readAheader), so that events keep their pace while the
	// tables are dumped; the pass runs on the loop once the read is in.
	// One read at a time: a tick during one is served by it.
	readAhead := make(chan readResult, 1)
	reading := false
	resyncNow := func() {
		ra, ok := d.be.(readAheader)
		if !ok || needFull || !d.configured {
			reconcile(true)
			return
		}
		if reading {
			return
		}
		reading = true
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			pass, err := ra.ReadAhead(ctx)
			readAhead <- readResult{pass, err}
		}()
	}
	reacquire := func() {
		wait, err := d.acquire(ctx, lease.Hint{Subnet: d.own.Subnet, IPv6Subnet: d.own.IPv6Subnet}, leaseAttempt)
		if err != nil {
			leaseAttempt++
			needAcquire = true
			schedule(leaseT, wait)
			return
		}
		needAcquire, leaseAttempt = false, 0
		scheduleRenew()
		reconcile(true)
	}

	// onEvents applies b and what follows it; it reports whether that
	// took a full pass.
	onEvents := func(b batch) (fullPass bool) {
		full, lost, evs := d.applyBatches(drain(events, b))
		if lost && !needAcquire {
			d.log.Warn("our lease was removed or taken; acquiring again", "subnet", leaseName(d.own))
			d.dropLease("lease " + leaseName(d.own) + " lost; acquiring again")
			reacquire()
			return false
		}
		if !full && !needFull && d.update(ctx, evs) {
			return false
		}
		fullPass = full || needFull
		reconcile(full)
		return fullPass
	}

	for {
		d.health.alive()
		select {
		case <-ctx.Done():
			d.log.Info("stopping; the datapath stays in place")
			return nil
		case b := <-events:
			onEvents(b)
		case r := <-readAhead:
			reading = false
			if r.err != nil {
				if ctx.Err() != nil {
					continue
				}
				d.log.Debug("reading the kernel ahead of a full pass failed; the pass reads it itself", "err", r.err)
			}
			// Events that came in meanwhile go first: the pass is the
			// safety net, they are the news.
			// A full pass they took makes this one's reading stale and
			// its work done.
			select {
			case b := <-events:
				if onEvents(b) {
					continue
				}
			default:
			}
			reconcileWith(true, r.pass)
		case why := <-repairs:
			if repairWhy == "" {
				repairWhy = why
				schedule(repairT, max(repairDebounce, time.Until(lastRepair.Add(repairEvery))))
			}
		case <-repairT.C:
			d.log.Info("repairing: the kernel lost part of the datapath", "change", repairWhy)
			d.metrics.repairs.Inc()
			repairWhy, lastRepair = "", time.Now()
			reconcile(true)
		case <-resync.C:
			resyncNow()
		case <-retry.C:
			reconcile(true)
		case <-leaseT.C:
			if d.leaseHeld && !d.own.Reservation() && time.Now().After(d.own.Expiration) {
				d.log.Error("lease expired without renewal", "subnet", leaseName(d.own), "expired", expiry(d.own))
				d.dropLease("lease " + leaseName(d.own) + " expired; acquiring again")
			}
			if needAcquire {
				reacquire()
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, storeTimeout)
			l, err := d.store.Renew(sctx, d.own)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					continue
				}
				d.log.Warn("lease renewal failed; acquiring again", "subnet", leaseName(d.own), "err", err)
				reacquire()
				continue
			}
			d.own, d.gotOwn = l, time.Now()
			d.metrics.leaseExpiry.Set(unixSeconds(l.Expiration))
			d.log.Info("lease renewed", "subnet", leaseName(l), "expires", expiry(l))
			scheduleRenew()
		}
	}
}

// update hands evs to a backend that applies changes on their own
// (backend.Updater), in time that does not grow with the cluster. It
// reports false when a reconcile must do it instead: another backend, no
// reconciled state yet, or a failure.
func (d *daemon) update(ctx context.Context, evs []lease.Event) bool {
	u, ok := d.be.(backend.Updater)
	if !ok || !d.configured || !d.admitted {
		return false
	}
	t0 := time.Now()
	evs = d.admitEvents(evs)
	if len(evs) == 0 {
		return true
	}
	err := u.Update(ctx, d.own, evs)
	if errors.Is(err, backend.ErrStale) {
		return false
	}
	d.metrics.reconcileDur.WithLabelValues(modeIncremental).Observe(time.Since(t0).Seconds())
	if err != nil {
		d.metrics.reconcileErrs.WithLabelValues(modeIncremental).Inc()
		if ctx.Err() == nil {
			d.log.Error("update failed; reconciling instead", "events", len(evs), "err", err)
		}
		return false
	}
	d.metrics.lastReconcile.Set(unixSeconds(time.Now()))
	d.log.Debug("updated", "events", len(evs), "took", time.Since(t0))
	return true
}

// admitEvents judges the leases evs change (admit.Update), keeping the
// refusals, and returns the changes to the admitted set. evs are what
// applyBatches returned.
func (d *daemon) admitEvents(evs []lease.Event) []lease.Event {
	d.unadmitted -= len(evs)
	evs, verdicts := d.admit.Update(evs)
	for _, v := range verdicts {
		if d.refusals.Set(d.log, &backend.LeaseError{Subnet: v.Subnet, Key: v.Key, Err: refusalErr(v)}) {
			d.metrics.refusals.Inc()
		}
	}
	d.metrics.refused.Set(float64(d.refusals.Len()))
	return evs
}

// admittedLeases judges the lease set afresh and returns what the
// datapath may program, own first.
func (d *daemon) admittedLeases() []lease.Lease {
	if id, ok := d.be.(backend.Identifier); ok {
		d.admit.Identity = id.Identities
	}
	ls, refused := d.admit.Reset(d.net, d.own, d.leases)
	d.admitted, d.admitOwn, d.unadmitted, d.resetsSkipped = true, d.own, 0, 0
	errs := make([]*backend.LeaseError, len(refused))
	for i, r := range refused {
		errs[i] = &backend.LeaseError{Subnet: r.Subnet, Key: r.Key, Err: refusalErr(r)}
	}
	d.metrics.refusals.Add(float64(d.refusals.Report(d.log, errs)))
	d.metrics.refused.Set(float64(len(refused)))
	return ls
}

// resetEvery bounds the periodic passes that reuse the admitted set
// between two Resets, which judge every lease afresh: a net, as the pass
// is for the kernel, that catches the set drifting from what a Reset
// says (once a minute at the default resync period).
const resetEvery = 6

// admittedFor is the lease set a full pass programs, own first: admit's
// admitted set as kept since the last Reset when cheap is set and nothing
// since calls for a Reset (a change admit has not seen, another own,
// resetEvery passes), else that of a Reset now.
func (d *daemon) admittedFor(cheap bool) []lease.Lease {
	if !cheap || !d.admitted || d.unadmitted != 0 || !d.admitOwn.Identical(d.own) || d.resetsSkipped >= resetEvery-1 {
		return d.admittedLeases()
	}
	d.resetsSkipped++
	return d.admit.Admitted()
}

// refusalErr is r as the error a SkipLog keeps: nil when admitted.
func refusalErr(r admit.Refusal) error {
	if r.Reason == "" {
		return nil
	}
	return errors.New("refused: " + r.Reason)
}

// A readAheader is a backend whose full pass can read the kernel off the
// event loop: at 5,000 leases the vxlan backend's dumps of 15,000 routes,
// neighbours and FDB entries are most of the pass.
type readAheader interface {
	// ReadAhead reads what a full Reconcile compares the lease set with,
	// and may run concurrently with the backend's other methods. It
	// returns that full Reconcile, against what it read, to be called
	// like them.
	ReadAhead(ctx context.Context) (fullPass, error)
}

// fullPass is a full Reconcile whose kernel state was read ahead.
type fullPass = func(ctx context.Context, own lease.Lease, leases []lease.Lease) error

// readResult is what a ReadAhead gave.
type readResult struct {
	pass fullPass
	err  error
}

// reconcile sets the datapath up for our lease if needed, then converges
// it to the lease set; a full pass through pass when that is set.
func (d *daemon) reconcile(ctx context.Context, full bool, pass fullPass) error {
	m := mode(full)
	if !d.configured {
		full, m = true, modeFull
		if err := d.setUp(ctx); err != nil {
			d.metrics.reconcileErrs.WithLabelValues(m).Inc()
			d.log.Error("set-up failed; retrying", "err", err)
			d.ready = false
			d.health.notReady(err.Error())
			return err
		}
	}
	tAdmit := time.Now()
	// A periodic pass (read ahead) reuses the admitted set; the others
	// (start, repair, retry, a new snapshot) judge every lease again.
	leases := d.admittedFor(full && pass != nil)
	t0 := time.Now()
	var err error
	if full && pass != nil {
		err = pass(ctx, d.own, leases)
	} else {
		err = d.be.Reconcile(ctx, d.own, leases, full)
	}
	took := time.Since(t0)
	d.metrics.reconcileDur.WithLabelValues(m).Observe(took.Seconds())
	if err != nil {
		d.metrics.reconcileErrs.WithLabelValues(m).Inc()
		if ctx.Err() == nil {
			d.log.Error("reconcile failed; the next one is full", "mode", m, "leases", len(leases), "err", err)
		}
		if !d.ready {
			d.health.notReady("reconcile failed: " + err.Error())
		} else if full {
			// The node is set up and serves its pods; some remote entries
			// did not go in (logged, counted, retried). /readyz, the marker
			// and CNI STATUS keep telling the same story: ready.
			d.health.vouch()
		}
		return err
	}
	d.metrics.lastReconcile.Set(unixSeconds(time.Now()))
	d.log.Debug("reconciled", "mode", m, "leases", len(leases), "took", took, "admission", t0.Sub(tAdmit), "read_ahead", full && pass != nil)
	if full {
		for _, own := range []netip.Prefix{d.own.Subnet, d.own.IPv6Subnet} {
			if did, err := keepBridgeRoute(d.h, own); err != nil {
				d.log.Warn("checking the pod bridge's route", "subnet", own, "err", err)
			} else if did != "" {
				d.metrics.repairs.Inc()
				d.log.Warn("restored the pod bridge's route to this node's subnet", "route", did)
			}
		}
	}
	if full && d.ready {
		d.health.vouch()
		d.sd.status(d.readyStatus(len(leases)))
	}
	if full && d.watchKernelOnce != nil {
		d.watchKernelOnce()
	}
	if full && !d.ready && d.leaseHeld {
		d.ready = true
		d.health.setReady()
		d.sd.ready(d.readyStatus(len(leases)))
		if !d.everReady {
			d.everReady = true
			d.log.Info(fmt.Sprintf("programmed %d leases in %s", len(leases), time.Since(d.start).Round(time.Millisecond)))
			d.complete(ctx)
			// The last collection counted the start-up's transients (the
			// store's list as decoded, the first plans and kernel dumps)
			// as live, and the collector lets the heap grow to twice what
			// was live before it collects again: a node with thousands of
			// leases would hold the pages of about twice its start-up
			// heap. One collection now, and the freed pages returned, set
			// that bound from what the agent keeps. Off the event loop.
			d.wg.Add(1)
			go func() {
				defer d.wg.Done()
				debug.FreeOSMemory()
			}()
		}
		d.log.Info("ready", "subnet", leaseName(d.own), "leases", len(leases))
	}
	return nil
}
