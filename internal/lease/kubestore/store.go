// Package kubestore is weft's --kube-subnet-mgr: a lease.Store over the
// Kubernetes API, compatible with flannel's pkg/subnet/kube. A node's
// subnet is its spec.podCIDR(s), assigned by kube-controller-manager; each
// agent publishes its lease in its node's annotations (package kubeannot)
// and learns the others' from one informer on nodes.
//
// Beyond lease.Store, *Store offers what the agent needs in Kubernetes
// mode; the daemon type-asserts these methods:
//
//	NodeName() string
//	NodePublicIPs(ctx) (v4, v6 netip.Addr, err error)   // node-public-ip(v6): override --public-ip(v6), before interface selection
//	VtepMACs(ctx) (v4, v6 net.HardwareAddr, err error)  // VtepMACs this node published, for a restarted vxlan backend
//	Complete(ctx) error                                 // NetworkUnavailable=False once up (--set-node-network-unavailable)
//	WatchNetworkConfig(ctx, fn func([]byte)) error      // calls fn when the net-conf file changes
//	Ping(ctx) error                                     // the API server answers and is ready (weft_store_up)
//	Close()
//
// RBAC is flannel's ClusterRole: pods get (only without NODE_NAME), nodes
// get, list, watch, and nodes/status patch (never nodes patch).
package kubestore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/kubeannot"
)

// Defaults, as flannel's.
const (
	DefaultNetConfigPath    = "/etc/kube-flannel/net-conf.json"
	DefaultEventQueueDepth  = 5000
	DefaultCacheSyncTimeout = 10 * time.Minute
	// LeaseTTL is the expiration Acquire and Renew give the lease. Nothing
	// expires in the API; the agent only uses it to schedule Renew.
	LeaseTTL = 24 * time.Hour
)

// Options configures a Store. Zero values take the defaults.
type Options struct {
	// APIURL and Kubeconfig are --kube-api-url and --kubeconfig-file;
	// both empty means the in-cluster config (the pod's service account),
	// as flannel's clientcmd.BuildConfigFromFlags. KUBECONFIG is not read.
	APIURL     string
	Kubeconfig string
	// RESTConfig, when set, is used instead of APIURL and Kubeconfig.
	RESTConfig *rest.Config
	UserAgent  string

	// AnnotationPrefix is the raw --kube-annotation-prefix
	// (kubeannot.DefaultPrefix when empty).
	AnnotationPrefix string
	// NetConfigPath is --net-config-path (DefaultNetConfigPath when empty).
	NetConfigPath string
	// SetNodeNetworkUnavailable is --set-node-network-unavailable: Complete
	// sets the node's NetworkUnavailable condition to False.
	SetNodeNetworkUnavailable bool

	// NodeName is this node's name; when empty, the pod PodNamespace/PodName
	// is read and its spec.nodeName used. FromEnv fills these.
	NodeName     string
	PodName      string
	PodNamespace string

	// EventQueueDepth bounds the node changes queued for a Watch between the
	// informer and the agent (DefaultEventQueueDepth when ≤ 0).
	EventQueueDepth int
	// CacheSyncTimeout bounds Open's wait for the node list
	// (DefaultCacheSyncTimeout when zero).
	CacheSyncTimeout time.Duration
	// ContinueWhenCacheNotReady lets Open return a working Store when the
	// node list has not synced in time (CONT_WHEN_CACHE_NOT_READY=true).
	ContinueWhenCacheNotReady bool
	// Waiting, when set, is told why Acquire waits (the node not
	// registered yet, or without a podCIDR), so that the agent's /readyz
	// can say so instead of only "acquiring a lease".
	Waiting func(why string)

	Logger *slog.Logger
}

// FromEnv reads what flanneld takes from its environment: NODE_NAME,
// POD_NAME, POD_NAMESPACE, EVENT_QUEUE_DEPTH (an integer; ≤ 0 means the
// default) and CONT_WHEN_CACHE_NOT_READY (only the exact string "true"
// counts). Unset variables leave their fields alone.
func (o *Options) FromEnv(getenv func(string) string) error {
	if v := getenv("NODE_NAME"); v != "" {
		o.NodeName = v
	}
	if v := getenv("POD_NAME"); v != "" {
		o.PodName = v
	}
	if v := getenv("POD_NAMESPACE"); v != "" {
		o.PodNamespace = v
	}
	if v := getenv("EVENT_QUEUE_DEPTH"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("env EVENT_QUEUE_DEPTH=%q: not an integer", v)
		}
		o.EventQueueDepth = n
	}
	if v := getenv("CONT_WHEN_CACHE_NOT_READY"); v != "" {
		o.ContinueWhenCacheNotReady = v == "true"
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.AnnotationPrefix == "" {
		o.AnnotationPrefix = kubeannot.DefaultPrefix
	}
	if o.NetConfigPath == "" {
		o.NetConfigPath = DefaultNetConfigPath
	}
	if o.EventQueueDepth <= 0 {
		o.EventQueueDepth = DefaultEventQueueDepth
	}
	if o.CacheSyncTimeout <= 0 {
		o.CacheSyncTimeout = DefaultCacheSyncTimeout
	}
	if o.UserAgent == "" {
		o.UserAgent = "weftd"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Store is a lease.Store over the Kubernetes API. It is safe for
// concurrent use. Open starts its informer; Close stops it.
type Store struct {
	o        Options
	log      *slog.Logger
	keys     kubeannot.Keys
	client   *coreClient
	nodeName string
	informer cache.SharedIndexInformer

	cancel context.CancelFunc
	done   chan struct{}

	// own is closed and replaced whenever the informer reports a change
	// to this node: Acquire waits on it.
	ownMu sync.Mutex
	own   chan struct{}

	listErr     atomic.Pointer[string] // the informer's last list/watch error
	waitLogged  atomic.Bool            // "no podCIDR yet" said once
	foundLogged atomic.Bool            // "node not registered yet" said once
}

var _ lease.Store = (*Store)(nil)

// Open connects, learns this node's name, starts the node informer and
// waits (up to CacheSyncTimeout, and ctx) for its first list. ctx bounds
// only the start; the informer runs until Close.
func Open(ctx context.Context, o Options) (*Store, error) {
	o = o.withDefaults()
	keys, err := kubeannot.NewKeys(o.AnnotationPrefix)
	if err != nil {
		return nil, err
	}
	cfg := o.RESTConfig
	if cfg == nil {
		if cfg, err = ClientConfig(o.APIURL, o.Kubeconfig); err != nil {
			return nil, err
		}
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = o.UserAgent
	// Nodes are listed and watched in protobuf: less CPU and memory than
	// JSON in a large cluster. Patches keep their JSON patch types.
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	client, err := newCoreClient(cfg)
	if err != nil {
		return nil, err
	}
	return open(ctx, client, keys, o)
}

func open(ctx context.Context, client *coreClient, keys kubeannot.Keys, o Options) (*Store, error) {
	s := &Store{o: o, log: o.Logger, keys: keys, client: client, own: make(chan struct{})}
	name, err := s.resolveNodeName(ctx)
	if err != nil {
		return nil, err
	}
	s.nodeName = name

	// No resync: Watch compares every event with what it reported, and
	// the agent reconciles the datapath on its own timer, so replaying
	// unchanged nodes every few minutes (flannel: 5) adds nothing.
	s.informer = cache.NewSharedIndexInformer(client.nodeListWatch(), &corev1.Node{}, 0, cache.Indexers{})
	if err := s.informer.SetTransform(s.strip); err != nil {
		return nil, fmt.Errorf("node informer: %w", err)
	}
	if err := s.informer.SetWatchErrorHandlerWithContext(s.watchError); err != nil {
		return nil, fmt.Errorf("node informer: %w", err)
	}
	if _, err := s.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.nodeEvent(obj) },
		UpdateFunc: func(_, obj any) { s.nodeEvent(obj) },
		DeleteFunc: func(obj any) { s.nodeEvent(obj) },
	}); err != nil {
		return nil, fmt.Errorf("node informer: %w", err)
	}

	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan struct{})
	go func() {
		defer close(s.done)
		s.informer.RunWithContext(runCtx)
	}()

	s.log.Info("waiting for the node list", "node", name, "timeout", o.CacheSyncTimeout)
	t0 := time.Now()
	if err := s.waitSynced(ctx, o.CacheSyncTimeout); err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil && o.ContinueWhenCacheNotReady {
			s.log.Warn("the node list has not synced; going on (CONT_WHEN_CACHE_NOT_READY=true)", "err", err)
			return s, nil
		}
		s.Close()
		return nil, err
	}
	s.log.Info("node list synced", "nodes", len(s.informer.GetStore().ListKeys()), "took", time.Since(t0).Round(time.Millisecond))
	return s, nil
}

// Ping reports whether the API server answers and is ready, for the
// agent's weft_store_up.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.client.readyz(ctx); err != nil {
		return fmt.Errorf("kubernetes API: %w", err)
	}
	return nil
}

// Close stops the informer and waits for it. Watch calls still running
// return when their contexts end.
func (s *Store) Close() {
	s.cancel()
	<-s.done
}

// NodeName is the node this agent runs on.
func (s *Store) NodeName() string { return s.nodeName }

// Keys are the annotation keys in use.
func (s *Store) Keys() kubeannot.Keys { return s.keys }

func (s *Store) resolveNodeName(ctx context.Context) (string, error) {
	if s.o.NodeName != "" {
		return s.o.NodeName, nil
	}
	if s.o.PodName == "" || s.o.PodNamespace == "" {
		return "", errors.New("cannot tell which node this is: NODE_NAME is not set, nor are both POD_NAME and POD_NAMESPACE")
	}
	what := fmt.Sprintf("get pod %s/%s to learn the node name", s.o.PodNamespace, s.o.PodName)
	pod, err := s.client.getPod(ctx, s.o.PodNamespace, s.o.PodName)
	if err != nil {
		return "", apiErr(what, "pods get (or set NODE_NAME)", err)
	}
	if pod.Spec.NodeName == "" {
		return "", fmt.Errorf("pod %s/%s has no spec.nodeName", s.o.PodNamespace, s.o.PodName)
	}
	return pod.Spec.NodeName, nil
}

// waitSynced waits for the informer's first list. The informer retries a
// failed list on its own; the error returned names the last failure.
func (s *Store) waitSynced(ctx context.Context, timeout time.Duration) error {
	if s.informer.HasSynced() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			err := ctx.Err()
			if last := s.listErr.Load(); last != nil {
				return fmt.Errorf("node list not synced after %s: %w (last error: %s)", timeout, err, *last)
			}
			return fmt.Errorf("node list not synced after %s: %w", timeout, err)
		case <-t.C:
			if s.informer.HasSynced() {
				return nil
			}
		}
	}
}

// watchError replaces client-go's handler, which logs through klog: a
// failed list or watch is logged once per distinct error, with the
// permission it lacks.
func (s *Store) watchError(_ context.Context, _ *cache.Reflector, err error) {
	msg := apiErr("list/watch nodes", "nodes list and watch", err).Error()
	if prev := s.listErr.Swap(&msg); prev == nil || *prev != msg {
		s.log.Warn("node informer: retrying", "err", msg)
	}
}

// apiErr wraps an API error with what was being done and, for a refusal,
// the permission the agent's ClusterRole lacks.
func apiErr(what, need string, err error) error {
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("%s: forbidden: the agent's ClusterRole needs %s: %w", what, need, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// strip is the informer's transform: the cache keeps of each node only
// what the agent reads (name, podCIDRs, the annotations under our prefix),
// not managed fields, labels, taints, images or the rest of its status,
// so memory does not grow with what nodes carry for others.
func (s *Store) strip(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	var ann map[string]string
	for k, v := range n.Annotations {
		if s.keys.Owns(k) {
			if ann == nil {
				ann = map[string]string{}
			}
			ann[k] = v
		}
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:            n.Name,
			UID:             n.UID,
			ResourceVersion: n.ResourceVersion,
			Annotations:     ann,
		},
		Spec: corev1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs},
	}, nil
}

// nodeEvent wakes Acquire when this node changed.
func (s *Store) nodeEvent(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil || key != s.nodeName {
		return
	}
	s.ownMu.Lock()
	close(s.own)
	s.own = make(chan struct{})
	s.ownMu.Unlock()
}

// ownChanged returns a channel closed at the next change to this node.
func (s *Store) ownChanged() <-chan struct{} {
	s.ownMu.Lock()
	defer s.ownMu.Unlock()
	return s.own
}

// cachedNode returns a node as the informer holds it (stripped).
func (s *Store) cachedNode(name string) (*corev1.Node, bool) {
	obj, ok, err := s.informer.GetStore().GetByKey(name)
	if err != nil || !ok {
		return nil, false
	}
	n, ok := obj.(*corev1.Node)
	return n, ok
}
