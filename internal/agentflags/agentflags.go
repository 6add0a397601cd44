// Package agentflags is weftd's command line: flanneld's flags, weft's own,
// and the FLANNELD_<NAME> environment variables that stand in for any of
// them. weftd parses its arguments with it; weft doctor registers the same
// flags, so that a node is diagnosed with exactly the settings its agent
// runs with (an agent's command line can be pasted as is).
package agentflags

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/daemon"
	"github.com/weft-net/weft/internal/lease/etcdstore"
)

// ErrVersion is returned by Parse for --version.
var ErrVersion = errors.New("version requested")

// Settings is the command line, parsed.
type Settings struct {
	Options  daemon.Options
	LogLevel slog.Level
}

// Flags are weftd's flags, registered on one FlagSet.
type Flags struct {
	names map[string]bool // the flags Register added

	endpoints, prefix, keyFile, certFile, caFile, user, password *string

	ifaces, regexes              listFlag
	canReach, publicIP, publicV6 *addrFlag

	subnetFile, netConfPath, healthzIP *string
	ipMasq, forwardRules, kubeMgr      *bool
	healthzPort, renewMargin, iptSync  *int
	resync                             *time.Duration
	level                              *levelFlag
	version                            *bool
}

// Register adds every weftd flag, with weftd's defaults, to fs.
func Register(fs *flag.FlagSet) *Flags {
	before := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { before[f.Name] = true })

	f := &Flags{
		canReach: &addrFlag{want: 4},
		publicIP: &addrFlag{want: 4},
		publicV6: &addrFlag{want: 6},
		level:    &levelFlag{level: slog.LevelInfo},
	}
	f.endpoints = fs.String("etcd-endpoints", "http://127.0.0.1:4001,http://127.0.0.1:2379", "comma-separated etcd endpoints")
	f.prefix = fs.String("etcd-prefix", etcdstore.DefaultPrefix, "etcd key prefix of the network config and leases")
	f.keyFile = fs.String("etcd-keyfile", "", "TLS client key for etcd")
	f.certFile = fs.String("etcd-certfile", "", "TLS client certificate for etcd")
	f.caFile = fs.String("etcd-cafile", "", "CA that signed etcd's certificates")
	f.user = fs.String("etcd-username", "", "etcd user name")
	f.password = fs.String("etcd-password", "", "etcd password")

	f.subnetFile = fs.String("subnet-file", daemon.DefaultSubnetFile, "file the subnet and MTU are written to, for the CNI plugin")
	f.ipMasq = fs.Bool("ip-masq", false, "masquerade traffic from the pod network to destinations outside it")
	f.forwardRules = fs.Bool("iptables-forward-rules", true, "accept forwarded traffic from and to the pod network")
	f.kubeMgr = fs.Bool("kube-subnet-mgr", false, "keep leases in the Kubernetes API (not supported yet)")
	_ = fs.String("kubeconfig-file", "", "kubeconfig for --kube-subnet-mgr")
	f.netConfPath = fs.String("net-config-path", "", "read the network config from this file instead of etcd")
	f.healthzIP = fs.String("healthz-ip", "0.0.0.0", "address the health server listens on")
	f.healthzPort = fs.Int("healthz-port", 0, "port of the health server (/healthz, /readyz, /metrics); 0 disables it")
	f.renewMargin = fs.Int("subnet-lease-renew-margin", 60, "renew the lease this many minutes before it expires")
	f.iptSync = fs.Int("iptables-resync", 5, "re-check the masquerade and forward rules every this many seconds")
	f.resync = fs.Duration("resync-period", daemon.DefaultResyncPeriod, "compare the datapath with the lease set and repair it this often")
	f.version = fs.Bool("version", false, "print the version and exit")
	fs.Var(&f.ifaces, "iface", "interface (name or IP address) to reach other nodes by; repeat to try several in order")
	fs.Var(&f.regexes, "iface-regex", "regular expression matched against interface addresses, then names; repeatable")
	fs.Var(f.canReach, "iface-can-reach", "use the interface the kernel would route to this address by")
	fs.Var(f.publicIP, "public-ip", "IPv4 address other nodes reach this one at (default: the interface's)")
	fs.Var(f.publicV6, "public-ipv6", "IPv6 address other nodes reach this one at")
	fs.Var(f.level, "log-level", "debug, info, warn or error (default info)")

	f.names = map[string]bool{}
	fs.VisitAll(func(fl *flag.Flag) {
		if !before[fl.Name] {
			f.names[fl.Name] = true
		}
	})
	return f
}

// ApplyEnv fills every flag of f that the command line did not set from
// FLANNELD_<NAME> (upper case, '-' as '_'). fs must be parsed. Other flags
// of fs are left alone. It applies every variable it can and returns the
// first bad one.
func (f *Flags) ApplyEnv(fs *flag.FlagSet, lookupEnv func(string) (string, bool)) error {
	given := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	var envErr error
	fs.VisitAll(func(fl *flag.Flag) {
		if !f.names[fl.Name] || given[fl.Name] {
			return
		}
		name := EnvName(fl.Name)
		v, ok := lookupEnv(name)
		if !ok {
			return
		}
		if err := fs.Set(fl.Name, v); err != nil && envErr == nil {
			envErr = fmt.Errorf("%s=%q: %w", name, v, err)
		}
	})
	return envErr
}

// Version reports whether --version was given.
func (f *Flags) Version() bool { return *f.version }

// Settings checks the values and returns them as daemon options.
func (f *Flags) Settings() (Settings, error) {
	if *f.kubeMgr {
		return Settings{}, errors.New("--kube-subnet-mgr: the Kubernetes subnet manager is not supported yet; keep leases in etcd (--etcd-endpoints)")
	}
	var eps []string
	for _, e := range strings.Split(*f.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	switch {
	case len(eps) == 0:
		return Settings{}, errors.New("--etcd-endpoints: no endpoint given")
	case *f.healthzPort < 0 || *f.healthzPort > 65535:
		return Settings{}, fmt.Errorf("--healthz-port %d: want 0 (off) to 65535", *f.healthzPort)
	case *f.renewMargin <= 0:
		return Settings{}, fmt.Errorf("--subnet-lease-renew-margin %d: want a positive number of minutes", *f.renewMargin)
	case *f.iptSync <= 0:
		return Settings{}, fmt.Errorf("--iptables-resync %d: want a positive number of seconds", *f.iptSync)
	case *f.resync <= 0:
		return Settings{}, fmt.Errorf("--resync-period %s: want a positive duration", *f.resync)
	}
	if *f.healthzPort != 0 {
		if _, err := netip.ParseAddr(*f.healthzIP); err != nil {
			return Settings{}, fmt.Errorf("--healthz-ip %q: not an IP address", *f.healthzIP)
		}
	}

	o := daemon.Options{
		Etcd: etcdstore.ClientOptions{
			Endpoints: eps, CertFile: *f.certFile, KeyFile: *f.keyFile, CAFile: *f.caFile,
			Username: *f.user, Password: *f.password,
		},
		EtcdPrefix:     *f.prefix,
		PublicIPv6:     f.publicV6.addr,
		SubnetFile:     *f.subnetFile,
		NetConfigPath:  *f.netConfPath,
		IPMasq:         *f.ipMasq,
		ForwardRules:   *f.forwardRules,
		IPTablesResync: time.Duration(*f.iptSync) * time.Second,
		HealthzIP:      *f.healthzIP,
		HealthzPort:    *f.healthzPort,
		RenewMargin:    time.Duration(*f.renewMargin) * time.Minute,
		ResyncPeriod:   *f.resync,
	}
	o.Iface.Ifaces = slices.Clone([]string(f.ifaces))
	o.Iface.Regexes = slices.Clone([]string(f.regexes))
	o.Iface.CanReach = f.canReach.addr
	o.Iface.PublicIP = f.publicIP.addr
	return Settings{Options: o, LogLevel: f.level.level}, nil
}

// Parse reads weftd's command line (args without the program name), then
// fills every flag not given there from the environment. Usage and errors
// go to out. It returns flag.ErrHelp for --help and ErrVersion for
// --version.
func Parse(args []string, lookupEnv func(string) (string, bool), out io.Writer) (Settings, error) {
	fs := flag.NewFlagSet("weftd", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: weftd [flags]\n\n"+
			"weftd is the weft node agent, a drop-in for flanneld: it leases a subnet for\n"+
			"this node from etcd and programs the datapath to every other node's subnet.\n"+
			"Every flag can also be set as FLANNELD_<NAME> (--iface-regex: FLANNELD_IFACE_REGEX);\n"+
			"a flag on the command line wins over the environment.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	f := Register(fs)
	if err := fs.Parse(args); err != nil {
		return Settings{}, err
	}
	if fs.NArg() > 0 {
		err := fmt.Errorf("unexpected argument %q (weftd takes only flags)", fs.Arg(0))
		fmt.Fprintf(out, "%v\n", err)
		fs.Usage()
		return Settings{}, err
	}
	envErr := f.ApplyEnv(fs, lookupEnv)
	// --version answers even when the environment holds a bad value.
	if f.Version() {
		return Settings{}, ErrVersion
	}
	if envErr != nil {
		return Settings{}, envErr
	}
	return f.Settings()
}

// EnvName is the environment variable of a flag: iface-regex ->
// FLANNELD_IFACE_REGEX.
func EnvName(flagName string) string {
	return "FLANNELD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// listFlag is a repeatable flag (--iface eth0 --iface eth1).
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	*l = append(*l, s)
	return nil
}

// addrFlag is an IP address flag; empty means not given.
type addrFlag struct {
	addr netip.Addr
	want int // 4 or 6
}

func (a *addrFlag) String() string {
	if a == nil || !a.addr.IsValid() {
		return ""
	}
	return a.addr.String()
}

func (a *addrFlag) Set(s string) error {
	if s == "" {
		a.addr = netip.Addr{}
		return nil
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return fmt.Errorf("not an IP address")
	}
	ip = ip.Unmap()
	if a.want == 4 && !ip.Is4() || a.want == 6 && !ip.Is6() {
		return fmt.Errorf("not an IPv%d address", a.want)
	}
	a.addr = ip
	return nil
}

// levelFlag is --log-level.
type levelFlag struct{ level slog.Level }

func (l *levelFlag) String() string { return strings.ToLower(l.level.String()) }
func (l *levelFlag) Set(s string) error {
	if err := l.level.UnmarshalText([]byte(s)); err != nil {
		return errors.New("want debug, info, warn or error")
	}
	return nil
}
