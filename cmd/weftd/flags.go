package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/daemon"
	"github.com/weft-net/weft/internal/lease/etcdstore"
)

// errVersion asks main to print the version and exit.
var errVersion = errors.New("version requested")

// settings is the command line, parsed.
type settings struct {
	opts     daemon.Options
	logLevel slog.Level
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

// parseFlags reads flanneld's flags (and weft's own), then fills every flag
// not given on the command line from FLANNELD_<NAME> in the environment
// (upper case, '-' as '_'). Usage and errors go to out. It returns
// flag.ErrHelp for --help and errVersion for --version.
func parseFlags(args []string, lookupEnv func(string) (string, bool), out io.Writer) (settings, error) {
	fs := flag.NewFlagSet("weftd", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "usage: weftd [flags]\n\n"+
			"weftd is the weft node agent, a drop-in for flanneld: it leases a subnet for\n"+
			"this node from etcd and programs the datapath to every other node's subnet.\n"+
			"Every flag can also be set as FLANNELD_<NAME> (--iface-regex: FLANNELD_IFACE_REGEX);\n"+
			"a flag on the command line wins over the environment.\n\nflags:\n")
		fs.PrintDefaults()
	}

	var (
		endpoints = fs.String("etcd-endpoints", "http://127.0.0.1:4001,http://127.0.0.1:2379", "comma-separated etcd endpoints")
		prefix    = fs.String("etcd-prefix", etcdstore.DefaultPrefix, "etcd key prefix of the network config and leases")
		keyFile   = fs.String("etcd-keyfile", "", "TLS client key for etcd")
		certFile  = fs.String("etcd-certfile", "", "TLS client certificate for etcd")
		caFile    = fs.String("etcd-cafile", "", "CA that signed etcd's certificates")
		user      = fs.String("etcd-username", "", "etcd user name")
		password  = fs.String("etcd-password", "", "etcd password")

		ifaces, regexes listFlag
		canReach        = &addrFlag{want: 4}
		publicIP        = &addrFlag{want: 4}
		publicIPv6      = &addrFlag{want: 6}

		subnetFile    = fs.String("subnet-file", daemon.DefaultSubnetFile, "file the subnet and MTU are written to, for the CNI plugin")
		ipMasq        = fs.Bool("ip-masq", false, "masquerade traffic from the pod network to destinations outside it")
		forwardRules  = fs.Bool("iptables-forward-rules", true, "accept forwarded traffic from and to the pod network")
		kubeSubnetMgr = fs.Bool("kube-subnet-mgr", false, "keep leases in the Kubernetes API (not supported yet)")
		_             = fs.String("kubeconfig-file", "", "kubeconfig for --kube-subnet-mgr")
		netConfPath   = fs.String("net-config-path", "", "read the network config from this file instead of etcd")
		healthzIP     = fs.String("healthz-ip", "0.0.0.0", "address the health server listens on")
		healthzPort   = fs.Int("healthz-port", 0, "port of the health server (/healthz, /readyz, /metrics); 0 disables it")
		renewMargin   = fs.Int("subnet-lease-renew-margin", 60, "renew the lease this many minutes before it expires")
		iptResync     = fs.Int("iptables-resync", 5, "re-check the masquerade and forward rules every this many seconds")
		resync        = fs.Duration("resync-period", daemon.DefaultResyncPeriod, "compare the datapath with the lease set and repair it this often")
		level         = &levelFlag{level: slog.LevelInfo}
		version       = fs.Bool("version", false, "print the version and exit")
	)
	fs.Var(&ifaces, "iface", "interface (name or IP address) to reach other nodes by; repeat to try several in order")
	fs.Var(&regexes, "iface-regex", "regular expression matched against interface addresses, then names; repeatable")
	fs.Var(canReach, "iface-can-reach", "use the interface the kernel would route to this address by")
	fs.Var(publicIP, "public-ip", "IPv4 address other nodes reach this one at (default: the interface's)")
	fs.Var(publicIPv6, "public-ipv6", "IPv6 address other nodes reach this one at")
	fs.Var(level, "log-level", "debug, info, warn or error (default info)")

	if err := fs.Parse(args); err != nil {
		return settings{}, err
	}
	if fs.NArg() > 0 {
		err := fmt.Errorf("unexpected argument %q (weftd takes only flags)", fs.Arg(0))
		fmt.Fprintf(out, "%v\n", err)
		fs.Usage()
		return settings{}, err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || envErr != nil {
			return
		}
		name := EnvName(f.Name)
		v, ok := lookupEnv(name)
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			envErr = fmt.Errorf("%s=%q: %w", name, v, err)
		}
	})
	if *version {
		return settings{}, errVersion
	}
	if envErr != nil {
		return settings{}, envErr
	}
	if *kubeSubnetMgr {
		return settings{}, errors.New("--kube-subnet-mgr: the Kubernetes subnet manager is not supported yet; keep leases in etcd (--etcd-endpoints)")
	}

	var eps []string
	for _, e := range strings.Split(*endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	switch {
	case len(eps) == 0:
		return settings{}, errors.New("--etcd-endpoints: no endpoint given")
	case *healthzPort < 0 || *healthzPort > 65535:
		return settings{}, fmt.Errorf("--healthz-port %d: want 0 (off) to 65535", *healthzPort)
	case *renewMargin <= 0:
		return settings{}, fmt.Errorf("--subnet-lease-renew-margin %d: want a positive number of minutes", *renewMargin)
	case *iptResync <= 0:
		return settings{}, fmt.Errorf("--iptables-resync %d: want a positive number of seconds", *iptResync)
	case *resync <= 0:
		return settings{}, fmt.Errorf("--resync-period %s: want a positive duration", *resync)
	}
	if *healthzPort != 0 {
		if _, err := netip.ParseAddr(*healthzIP); err != nil {
			return settings{}, fmt.Errorf("--healthz-ip %q: not an IP address", *healthzIP)
		}
	}

	o := daemon.Options{
		Etcd: etcdstore.ClientOptions{
			Endpoints: eps, CertFile: *certFile, KeyFile: *keyFile, CAFile: *caFile,
			Username: *user, Password: *password,
		},
		EtcdPrefix:     *prefix,
		PublicIPv6:     publicIPv6.addr,
		SubnetFile:     *subnetFile,
		NetConfigPath:  *netConfPath,
		IPMasq:         *ipMasq,
		ForwardRules:   *forwardRules,
		IPTablesResync: time.Duration(*iptResync) * time.Second,
		HealthzIP:      *healthzIP,
		HealthzPort:    *healthzPort,
		RenewMargin:    time.Duration(*renewMargin) * time.Minute,
		ResyncPeriod:   *resync,
	}
	o.Iface.Ifaces = ifaces
	o.Iface.Regexes = regexes
	o.Iface.CanReach = canReach.addr
	o.Iface.PublicIP = publicIP.addr
	return settings{opts: o, logLevel: level.level}, nil
}

// EnvName is the environment variable of a flag: iface-regex ->
// FLANNELD_IFACE_REGEX.
func EnvName(flagName string) string {
	return "FLANNELD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}
