// Package agentflags is weftd's command line: flanneld's flags, weft's own,
// and the FLANNELD_<NAME> environment variables that stand in for any of
// them, read as flanneld reads them. It fills agentopts.Options. weftd
// parses its arguments with it; weft doctor registers the same flags and
// reads a running weftd's command line and environment with it, so that a
// node is diagnosed with exactly the settings its agent runs with.
package agentflags

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/agentopts"
)

// ErrVersion is returned by Parse for --version.
var ErrVersion = errors.New("version requested")

// ErrInvalid matches (errors.Is) Settings' errors: values that parse but
// that weftd cannot run with. flanneld exits 1 for those and 2 for a
// command line that does not parse.
var ErrInvalid = errors.New("invalid setting")

type invalidError struct{ msg string }

func (e invalidError) Error() string        { return e.msg }
func (e invalidError) Is(target error) bool { return target == ErrInvalid }

func invalid(format string, args ...any) error {
	return invalidError{fmt.Sprintf(format, args...)}
}

// Settings is the command line and environment, parsed.
type Settings struct {
	Options  agentopts.Options
	LogLevel slog.Level
	// Warnings are what weftd should log once it can: FLANNELD_* values
	// that did not parse (their flag keeps its default and weftd starts,
	// as flanneld starts), FLANNELD_* variables for flags weftd does not
	// have, and settings that have no effect.
	Warnings []string
}

// Flags are weftd's flags, registered on one FlagSet.
type Flags struct {
	fs    *flag.FlagSet
	names map[string]bool // the flags Register added

	o            agentopts.Options // string and bool flags write here directly
	endpoints    string
	renewMargin  int // minutes
	iptSync      int // seconds
	ifaces, rxs  listFlag
	canReach     addrFlag
	publicIP, v6 addrFlag
	level        levelFlag
	verbosity    klogLevel
	vmodule      vmoduleFlag
	backtraceAt  traceFlag
	version      bool
	envWarnings  []string
}

// Register adds every weftd flag, with weftd's defaults, to fs.
func Register(fs *flag.FlagSet) *Flags {
	before := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { before[f.Name] = true })

	d := agentopts.Defaults()
	f := &Flags{
		fs:       fs,
		o:        d,
		canReach: addrFlag{want: 4},
		publicIP: addrFlag{want: 4},
		v6:       addrFlag{want: 6},
		level:    levelFlag{level: slog.LevelInfo},
	}
	o := &f.o
	// flanneld's, in its order (main.go:113-140).
	fs.StringVar(&f.endpoints, "etcd-endpoints", strings.Join(d.Etcd.Endpoints, ","), "comma-separated etcd endpoints")
	fs.StringVar(&o.EtcdPrefix, "etcd-prefix", d.EtcdPrefix, "etcd key prefix: the network config is at <prefix>/config, leases under <prefix>/subnets/")
	fs.StringVar(&o.Etcd.KeyFile, "etcd-keyfile", "", "TLS client key for etcd")
	fs.StringVar(&o.Etcd.CertFile, "etcd-certfile", "", "TLS client certificate for etcd")
	fs.StringVar(&o.Etcd.CAFile, "etcd-cafile", "", "CA that signed etcd's certificates")
	fs.StringVar(&o.Etcd.Username, "etcd-username", "", "etcd user name (basic auth)")
	fs.StringVar(&o.Etcd.Password, "etcd-password", "", "etcd password (basic auth)")
	fs.Var(&f.ifaces, "iface", "interface (name or IP address) to reach other nodes by; repeat to try several in order")
	fs.Var(&f.rxs, "iface-regex", "regular expression matched against interface addresses, then names; repeatable, tried after --iface")
	fs.Var(&f.canReach, "iface-can-reach", "use the interface the kernel would route to this address by (ip route get)")
	fs.StringVar(&o.SubnetFile, "subnet-file", d.SubnetFile, "file the subnet and MTU are written to, for the CNI plugin")
	fs.Var(&f.publicIP, "public-ip", "IPv4 address other nodes reach this one at (default: the interface's)")
	fs.Var(&f.v6, "public-ipv6", "IPv6 address other nodes reach this one at (default: the interface's)")
	fs.IntVar(&f.renewMargin, "subnet-lease-renew-margin", int(d.RenewMargin/time.Minute), "renew the lease this many minutes before it expires, 1 to 1439")
	fs.BoolVar(&o.IPMasq, "ip-masq", false, "masquerade traffic from the pod network to destinations outside it")
	fs.BoolVar(&o.IPMasqFullyRandomDisable, "ip-masq-fully-random-disable", false, "masquerade without --random-fully (iptables) or fully-random (nftables)")
	fs.BoolVar(&o.KubeSubnetMgr, "kube-subnet-mgr", false, "keep leases in the Kubernetes API (node podCIDRs and annotations) instead of etcd")
	fs.StringVar(&o.KubeAPIURL, "kube-api-url", "", "Kubernetes API server URL (not needed in a pod)")
	fs.StringVar(&o.KubeAnnotationPrefix, "kube-annotation-prefix", d.KubeAnnotationPrefix, `prefix of the node annotations; may contain one "/", else "/" is appended`)
	fs.StringVar(&o.KubeconfigFile, "kubeconfig-file", "", "kubeconfig file (not needed in a pod)")
	fs.BoolVar(&f.version, "version", false, "print the version and exit")
	fs.StringVar(&o.HealthzIP, "healthz-ip", d.HealthzIP, "address the health server listens on")
	fs.IntVar(&o.HealthzPort, "healthz-port", 0, "port of the health server (/healthz, /readyz, /metrics); 0 disables it")
	fs.IntVar(&f.iptSync, "iptables-resync", int(d.IPTablesResync/time.Second), "re-check the masquerade and forward rules and the blackhole route every this many seconds")
	fs.BoolVar(&o.ForwardRules, "iptables-forward-rules", d.ForwardRules, "accept forwarded traffic from and to the pod network")
	fs.BoolVar(&o.BlackholeRoute, "ip-blackhole-route", false, "keep a blackhole route (largest metric, behind the bridge's) for this node's pod subnet: packets to unused pod addresses are dropped, not sent out by the default route")
	fs.StringVar(&o.NetConfigPath, "net-config-path", d.NetConfigPath, "network config file of the Kubernetes store (--kube-subnet-mgr only)")
	fs.BoolVar(&o.SetNodeNetworkUnavailable, "set-node-network-unavailable", d.SetNodeNetworkUnavailable, "with --kube-subnet-mgr, set the node's NetworkUnavailable condition to False once up")
	// klog's, which flanneld copies (main.go:164-166).
	fs.Var(&f.verbosity, "v", "log verbosity (klog's -v): 0 logs at info, 1 or more at debug, unless --log-level is given")
	fs.Var(&f.vmodule, "vmodule", "klog's per-file verbosity (pattern=N,...): accepted as flanneld does, and ignored")
	fs.Var(&f.backtraceAt, "log_backtrace_at", "klog's file:N stack trace trigger: accepted as flanneld does, and ignored")
	// weft's own.
	fs.StringVar(&o.NetConfigFile, "net-config-file", "", "with the etcd store, read the network config from this file instead of <etcd-prefix>/config")
	fs.DurationVar(&o.ResyncPeriod, "resync-period", d.ResyncPeriod, "compare the datapath with the lease set and repair it this often")
	fs.Var(&f.level, "log-level", "debug, info, warn or error (default info)")

	f.names = map[string]bool{}
	fs.VisitAll(func(fl *flag.Flag) {
		if !before[fl.Name] {
			f.names[fl.Name] = true
		}
	})
	return f
}

// EnvName is the environment variable of a flag, as flanneld (coreos/pkg
// flagutil) derives it: iface-regex -> FLANNELD_IFACE_REGEX.
func EnvName(flagName string) string {
	return "FLANNELD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// ApplyEnv sets every flag of f that the command line did not give from
// FLANNELD_<NAME> in environ ("NAME=value" entries, as os.Environ), as
// flanneld does: an empty value is ignored; a repeatable flag takes the
// whole value as one entry; a value that does not parse leaves the flag
// at its default and becomes a warning, as does a FLANNELD_* variable no
// weftd flag reads. fs must be parsed. Flags of fs that Register did not
// add are left alone. The warnings are returned by Settings.
func (f *Flags) ApplyEnv(environ []string) {
	env := map[string]string{}
	var order []string
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		if _, dup := env[k]; dup || !strings.HasPrefix(k, "FLANNELD_") {
			continue // the first wins, as with getenv
		}
		env[k] = v
		order = append(order, k)
	}
	given := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	known := map[string]bool{}
	f.fs.VisitAll(func(fl *flag.Flag) {
		if !f.names[fl.Name] {
			return
		}
		name := EnvName(fl.Name)
		known[name] = true
		// flanneld answers --version before it reads the environment.
		if given[fl.Name] || fl.Name == "version" {
			return
		}
		v := env[name]
		if v == "" {
			return
		}
		if err := f.fs.Set(fl.Name, v); err != nil {
			// The flag package's own values store what they parsed (zero)
			// even when they fail: put the default back. (A list never
			// fails, and setting "" would add an entry.)
			if _, list := fl.Value.(*listFlag); !list {
				_ = fl.Value.Set(fl.DefValue)
			}
			f.envWarnings = append(f.envWarnings,
				fmt.Sprintf("%s=%q: %v; ignored, --%s keeps its default %q", name, v, err, fl.Name, fl.DefValue))
		}
	})
	for _, k := range order {
		switch v := env[k]; {
		case v == "":
		case k == EnvName("version"):
			f.envWarnings = append(f.envWarnings,
				fmt.Sprintf("%s=%q has no effect: --version is read from the command line only, as by flanneld", k, v))
		case !known[k]:
			flagName := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k, "FLANNELD_"), "_", "-"))
			f.envWarnings = append(f.envWarnings,
				fmt.Sprintf("%s=%q: weftd has no flag --%s; ignored", k, v, flagName))
		}
	}
}

// Version reports whether --version was given.
func (f *Flags) Version() bool { return f.version }

// given reports whether the flag was set, on the command line or from
// the environment.
func (f *Flags) given(name string) bool {
	set := false
	f.fs.Visit(func(fl *flag.Flag) { set = set || fl.Name == name })
	return set
}

// Override sets in f every weftd flag that src's command line gave,
// replacing f's value (a repeatable flag's whole list), so that src's
// flags win over f's.
func (f *Flags) Override(src *Flags) error {
	var err error
	src.fs.Visit(func(sfl *flag.Flag) {
		if err != nil || !src.names[sfl.Name] || !f.names[sfl.Name] {
			return
		}
		if sl, ok := sfl.Value.(*listFlag); ok {
			dl := f.fs.Lookup(sfl.Name).Value.(*listFlag)
			*dl = nil
			for _, v := range *sl {
				if err = f.fs.Set(sfl.Name, v); err != nil {
					return
				}
			}
			return
		}
		err = f.fs.Set(sfl.Name, sfl.Value.String())
	})
	return err
}

// Settings checks the values and returns them as agent options, with the
// warnings ApplyEnv found and those about the values. On error, the
// warnings are still returned.
func (f *Flags) Settings() (Settings, error) {
	warnings := slices.Clone(f.envWarnings)
	o := f.o
	o.Etcd.Endpoints = nil
	for _, e := range strings.Split(f.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			o.Etcd.Endpoints = append(o.Etcd.Endpoints, e)
		}
	}
	o.RenewMargin = time.Duration(f.renewMargin) * time.Minute
	o.IPTablesResync = time.Duration(f.iptSync) * time.Second
	o.Iface.Ifaces = slices.Clone([]string(f.ifaces))
	o.Iface.Regexes = slices.Clone([]string(f.rxs))
	o.Iface.CanReach = f.canReach.addr
	o.Iface.PublicIP = f.publicIP.addr
	o.Iface.PublicIPv6 = f.v6.addr

	var err error
	switch {
	case len(o.Etcd.Endpoints) == 0 && !o.KubeSubnetMgr:
		err = invalid("--etcd-endpoints: no endpoint given")
	case o.HealthzPort < 0 || o.HealthzPort > 65535:
		err = invalid("--healthz-port %d: want 0 (off) to 65535", o.HealthzPort)
	case f.renewMargin < 1 || f.renewMargin >= 24*60:
		// Leases live 24 h: a margin of a day or more renews at once, forever.
		err = invalid("--subnet-lease-renew-margin %d: want 1 to 1439 minutes", f.renewMargin)
	case f.iptSync <= 0:
		err = invalid("--iptables-resync %d: want a positive number of seconds", f.iptSync)
	case o.ResyncPeriod <= 0:
		err = invalid("--resync-period %s: want a positive duration", o.ResyncPeriod)
	}
	if err == nil && o.HealthzPort != 0 {
		if _, perr := netip.ParseAddr(o.HealthzIP); perr != nil {
			err = invalid("--healthz-ip %q: not an IP address", o.HealthzIP)
		}
	}
	if err != nil {
		return Settings{Warnings: warnings}, err
	}
	if !o.KubeSubnetMgr && f.given("net-config-path") {
		warnings = append(warnings, fmt.Sprintf("--net-config-path %s has no effect without --kube-subnet-mgr, as in flanneld: "+
			"the etcd store reads %s/config, or the file --net-config-file names", o.NetConfigPath, o.EtcdPrefix))
	}
	if o.NetConfigFile != "" && o.KubeSubnetMgr {
		warnings = append(warnings, fmt.Sprintf("--net-config-file %s has no effect with --kube-subnet-mgr: the Kubernetes store reads --net-config-path (%s)", o.NetConfigFile, o.NetConfigPath))
	}

	level := f.level.level
	if !f.given("log-level") && f.verbosity >= 1 {
		level = slog.LevelDebug
	}
	return Settings{Options: o, LogLevel: level, Warnings: warnings}, nil
}

// Parse reads weftd's command line (args without the program name), then
// fills every flag not given there from environ (os.Environ's form).
// Usage and errors go to out. It returns flag.ErrHelp for --help and
// ErrVersion for --version (answered before the environment is read, as by
// flanneld); errors matching ErrInvalid for values weftd cannot run with.
func Parse(args, environ []string, out io.Writer) (Settings, error) {
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
	if f.Version() {
		return Settings{}, ErrVersion
	}
	f.ApplyEnv(environ)
	return f.Settings()
}

// FromCommandLine reads a weftd's command line (without the program name)
// and environment as that weftd read them, for a tool that inspects a
// running agent. Usage and errors are discarded.
func FromCommandLine(args, environ []string) (*Flags, error) {
	fs := flag.NewFlagSet("weftd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := Register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	f.ApplyEnv(environ)
	return f, nil
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
		return errors.New("not an IP address")
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
	var v slog.Level
	if err := v.UnmarshalText([]byte(s)); err != nil {
		return errors.New("want debug, info, warn or error")
	}
	l.level = v
	return nil
}

// klogLevel is klog's -v: a 32-bit integer.
type klogLevel int32

func (k *klogLevel) String() string { return strconv.Itoa(int(*k)) }
func (k *klogLevel) Set(s string) error {
	v, err := strconv.ParseInt(s, 10, 32)
	if err != nil {
		return errors.New("want an integer")
	}
	*k = klogLevel(v)
	return nil
}

// vmoduleFlag is klog's -vmodule, checked with klog's syntax rules so that
// a command line flanneld refuses is refused here too, then ignored.
type vmoduleFlag string

func (m *vmoduleFlag) String() string { return string(*m) }
func (m *vmoduleFlag) Set(s string) error {
	for _, pat := range strings.Split(s, ",") {
		if pat == "" {
			continue
		}
		name, lvl, ok := strings.Cut(pat, "=")
		if !ok || name == "" || lvl == "" || strings.Contains(lvl, "=") {
			return errors.New("syntax error: expect comma-separated list of filename=N")
		}
		v, err := strconv.ParseInt(lvl, 10, 32)
		if err != nil {
			return errors.New("syntax error: expect comma-separated list of filename=N")
		}
		if v < 0 {
			return errors.New("negative value for vmodule level")
		}
	}
	*m = vmoduleFlag(s)
	return nil
}

// traceFlag is klog's -log_backtrace_at (file.go:N), checked as klog does,
// then ignored.
type traceFlag string

func (t *traceFlag) String() string { return string(*t) }
func (t *traceFlag) Set(s string) error {
	if s != "" {
		file, line, ok := strings.Cut(s, ":")
		n, err := strconv.Atoi(line)
		if !ok || strings.Contains(line, ":") || !strings.Contains(file, ".") || err != nil {
			return errors.New("syntax error: expect file.go:234")
		}
		if n <= 0 {
			return errors.New("negative or zero value for level")
		}
	}
	*t = traceFlag(s)
	return nil
}
