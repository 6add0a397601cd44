// Package agentopts holds weftd's settings as plain data: what flanneld's
// flags (and weft's own) say, with flanneld's defaults. agentflags fills it
// from a command line and FLANNELD_* variables; the daemon runs with it;
// doctor reads it to check a node against what its agent was told. It
// parses nothing and runs nothing, so each of those can import it without
// importing the others.
package agentopts

import (
	"time"

	"github.com/weft-net/weft/internal/netif"
	"github.com/weft-net/weft/internal/subnetenv"
)

// Defaults, as flanneld v0.28.9 has them (main.go:113-140), and weft's own.
const (
	DefaultEtcdPrefix           = "/coreos.com/network"
	DefaultSubnetFile           = subnetenv.DefaultPath
	DefaultHealthzIP            = "0.0.0.0"
	DefaultRenewMargin          = 60 * time.Minute
	DefaultIPTablesResync       = 5 * time.Second
	DefaultKubeAnnotationPrefix = "flannel.alpha.coreos.com"
	DefaultNetConfigPath        = "/etc/kube-flannel/net-conf.json"

	// weft's own.
	DefaultResyncPeriod = 10 * time.Second
	DefaultConfigRetry  = 5 * time.Second
)

// DefaultEtcdEndpoints is flanneld's --etcd-endpoints default.
func DefaultEtcdEndpoints() []string {
	return []string{"http://127.0.0.1:4001", "http://127.0.0.1:2379"}
}

// Options is everything weftd is told.
type Options struct {
	Etcd       Etcd   // --etcd-endpoints, --etcd-{cert,key,ca}file, --etcd-username/-password
	EtcdPrefix string // --etcd-prefix
	// LeaseTTL is the lifetime of a lease between renewals (etcd's 24 h
	// when zero, as flannel). Not a flag: tests shorten it.
	LeaseTTL time.Duration

	// Iface is --iface, --iface-regex, --iface-can-reach, --public-ip and
	// --public-ipv6.
	Iface netif.Spec

	SubnetFile string // --subnet-file
	// NetConfigFile is weft's --net-config-file: with the etcd store, read
	// the network config from this file instead of <prefix>/config.
	NetConfigFile string

	IPMasq bool // --ip-masq
	// IPMasqFullyRandomDisable is --ip-masq-fully-random-disable: masquerade
	// without --random-fully / fully-random.
	IPMasqFullyRandomDisable bool
	ForwardRules             bool // --iptables-forward-rules
	// BlackholeRoute is --ip-blackhole-route: a blackhole route for this
	// node's own subnet, so that traffic to its unused addresses is dropped
	// here rather than sent back out by the default route.
	BlackholeRoute bool
	// IPTablesResync is --iptables-resync: how often the masquerade and
	// forward rules and the blackhole route are checked.
	IPTablesResync time.Duration

	HealthzIP   string // --healthz-ip
	HealthzPort int    // --healthz-port; 0 = no health server

	RenewMargin  time.Duration // --subnet-lease-renew-margin
	ResyncPeriod time.Duration // weft's --resync-period: full reconcile interval
	// ConfigRetry is how often a missing or invalid network config is read
	// again. Not a flag.
	ConfigRetry time.Duration

	// The Kubernetes store (--kube-subnet-mgr) and its settings.
	KubeSubnetMgr  bool   // --kube-subnet-mgr
	KubeAPIURL     string // --kube-api-url
	KubeconfigFile string // --kubeconfig-file
	// KubeAnnotationPrefix is --kube-annotation-prefix as given: the
	// Kubernetes store checks it (flannel's annotations.go rules) when it
	// starts, as flanneld does.
	KubeAnnotationPrefix string
	// NetConfigPath is --net-config-path: the net-conf.json the Kubernetes
	// store reads. The etcd store does not read it (NetConfigFile).
	NetConfigPath             string
	SetNodeNetworkUnavailable bool // --set-node-network-unavailable
}

// Etcd is how to reach etcd. Its fields are etcdstore.ClientOptions',
// in the same order, so that etcdstore.ClientOptions(o.Etcd) converts it.
type Etcd struct {
	Endpoints []string
	CertFile  string // client certificate, with KeyFile
	KeyFile   string
	CAFile    string // CA that signed the servers' certificates
	Username  string
	Password  string
}

// Defaults returns the options weftd runs with when given no flags.
func Defaults() Options {
	return Options{
		Etcd:                      Etcd{Endpoints: DefaultEtcdEndpoints()},
		EtcdPrefix:                DefaultEtcdPrefix,
		SubnetFile:                DefaultSubnetFile,
		ForwardRules:              true,
		IPTablesResync:            DefaultIPTablesResync,
		HealthzIP:                 DefaultHealthzIP,
		RenewMargin:               DefaultRenewMargin,
		ResyncPeriod:              DefaultResyncPeriod,
		ConfigRetry:               DefaultConfigRetry,
		KubeAnnotationPrefix:      DefaultKubeAnnotationPrefix,
		NetConfigPath:             DefaultNetConfigPath,
		SetNodeNetworkUnavailable: true,
	}
}

// WithDefaults fills what is zero and cannot mean anything else: empty
// paths and prefixes, zero durations. Booleans and the Kubernetes settings
// are taken as they are (false and "" are values a caller may mean).
func (o Options) WithDefaults() Options {
	if o.EtcdPrefix == "" {
		o.EtcdPrefix = DefaultEtcdPrefix
	}
	if o.SubnetFile == "" {
		o.SubnetFile = DefaultSubnetFile
	}
	if o.RenewMargin <= 0 {
		o.RenewMargin = DefaultRenewMargin
	}
	if o.ResyncPeriod <= 0 {
		o.ResyncPeriod = DefaultResyncPeriod
	}
	if o.IPTablesResync <= 0 {
		o.IPTablesResync = DefaultIPTablesResync
	}
	if o.ConfigRetry <= 0 {
		o.ConfigRetry = DefaultConfigRetry
	}
	return o
}
