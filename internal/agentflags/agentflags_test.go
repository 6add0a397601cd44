package agentflags

import (
	"bufio"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/agentopts"
)

// flagCase is one flag: its default as flanneld shows it (flag.DefValue),
// a value, and what that value does to the options (applied to the
// defaults) and to the log level.
type flagCase struct {
	name, def, value string
	want             func(o *agentopts.Options)
	level            slog.Level // the log level the value gives
}

// flanneldFlags is every flag of flanneld v0.28.9 (flannel-compat.md §1,
// flannel main.go:113-166) but --version, which TestVersion covers.
var flanneldFlags = []flagCase{
	{name: "etcd-endpoints", def: "http://127.0.0.1:4001,http://127.0.0.1:2379", value: "https://10.0.0.1:2379,https://10.0.0.2:2379",
		want: func(o *agentopts.Options) {
			o.Etcd.Endpoints = []string{"https://10.0.0.1:2379", "https://10.0.0.2:2379"}
		}},
	{name: "etcd-prefix", def: "/coreos.com/network", value: "/weft/network", want: func(o *agentopts.Options) { o.EtcdPrefix = "/weft/network" }},
	{name: "etcd-keyfile", def: "", value: "/etc/k.pem", want: func(o *agentopts.Options) { o.Etcd.KeyFile = "/etc/k.pem" }},
	{name: "etcd-certfile", def: "", value: "/etc/c.pem", want: func(o *agentopts.Options) { o.Etcd.CertFile = "/etc/c.pem" }},
	{name: "etcd-cafile", def: "", value: "/etc/ca.pem", want: func(o *agentopts.Options) { o.Etcd.CAFile = "/etc/ca.pem" }},
	{name: "etcd-username", def: "", value: "flannel", want: func(o *agentopts.Options) { o.Etcd.Username = "flannel" }},
	{name: "etcd-password", def: "", value: "s3cret", want: func(o *agentopts.Options) { o.Etcd.Password = "s3cret" }},
	{name: "iface", def: "", value: "eth1", want: func(o *agentopts.Options) { o.Iface.Ifaces = []string{"eth1"} }},
	{name: "iface-regex", def: "", value: `^10\.0\.`, want: func(o *agentopts.Options) { o.Iface.Regexes = []string{`^10\.0\.`} }},
	{name: "iface-can-reach", def: "", value: "192.0.2.1", want: func(o *agentopts.Options) { o.Iface.CanReach = netip.MustParseAddr("192.0.2.1") }},
	{name: "subnet-file", def: "/run/flannel/subnet.env", value: "/tmp/s.env", want: func(o *agentopts.Options) { o.SubnetFile = "/tmp/s.env" }},
	{name: "public-ip", def: "", value: "203.0.113.9", want: func(o *agentopts.Options) { o.Iface.PublicIP = netip.MustParseAddr("203.0.113.9") }},
	{name: "public-ipv6", def: "", value: "2001:db8::9", want: func(o *agentopts.Options) { o.Iface.PublicIPv6 = netip.MustParseAddr("2001:db8::9") }},
	{name: "subnet-lease-renew-margin", def: "60", value: "30", want: func(o *agentopts.Options) { o.RenewMargin = 30 * time.Minute }},
	{name: "ip-masq", def: "false", value: "true", want: func(o *agentopts.Options) { o.IPMasq = true }},
	{name: "ip-masq-fully-random-disable", def: "false", value: "true", want: func(o *agentopts.Options) { o.IPMasqFullyRandomDisable = true }},
	{name: "kube-subnet-mgr", def: "false", value: "true", want: func(o *agentopts.Options) { o.KubeSubnetMgr = true }},
	{name: "kube-api-url", def: "", value: "https://10.96.0.1:443", want: func(o *agentopts.Options) { o.KubeAPIURL = "https://10.96.0.1:443" }},
	{name: "kube-annotation-prefix", def: "flannel.alpha.coreos.com", value: "example.com/foo", want: func(o *agentopts.Options) { o.KubeAnnotationPrefix = "example.com/foo" }},
	{name: "kubeconfig-file", def: "", value: "/etc/kubernetes/kubelet.conf", want: func(o *agentopts.Options) { o.KubeconfigFile = "/etc/kubernetes/kubelet.conf" }},
	{name: "healthz-ip", def: "0.0.0.0", value: "127.0.0.1", want: func(o *agentopts.Options) { o.HealthzIP = "127.0.0.1" }},
	{name: "healthz-port", def: "0", value: "8081", want: func(o *agentopts.Options) { o.HealthzPort = 8081 }},
	{name: "iptables-resync", def: "5", value: "7", want: func(o *agentopts.Options) { o.IPTablesResync = 7 * time.Second }},
	{name: "iptables-forward-rules", def: "true", value: "false", want: func(o *agentopts.Options) { o.ForwardRules = false }},
	{name: "ip-blackhole-route", def: "false", value: "true", want: func(o *agentopts.Options) { o.BlackholeRoute = true }},
	// In etcd mode it only warns; the value is kept for the Kubernetes store.
	{name: "net-config-path", def: "/etc/kube-flannel/net-conf.json", value: "/etc/flannel/net-conf.json", want: func(o *agentopts.Options) { o.NetConfigPath = "/etc/flannel/net-conf.json" }},
	{name: "set-node-network-unavailable", def: "true", value: "false", want: func(o *agentopts.Options) { o.SetNodeNetworkUnavailable = false }},
	{name: "v", def: "0", value: "2", level: slog.LevelDebug},
	{name: "vmodule", def: "", value: "main=2,kube*=4"},
	{name: "log_backtrace_at", def: "", value: "main.go:231"},
}

// weftFlags are weft's own.
var weftFlags = []flagCase{
	{name: "net-config-file", def: "", value: "/etc/weft/net-conf.json", want: func(o *agentopts.Options) { o.NetConfigFile = "/etc/weft/net-conf.json" }},
	{name: "resync-period", def: "10s", value: "3s", want: func(o *agentopts.Options) { o.ResyncPeriod = 3 * time.Second }},
	{name: "log-level", def: "info", value: "warn", level: slog.LevelWarn},
}

func allFlags() []flagCase { return append(slices.Clone(flanneldFlags), weftFlags...) }

func environ(kv ...string) []string {
	var out []string
	for i := 0; i < len(kv); i += 2 {
		out = append(out, kv[i]+"="+kv[i+1])
	}
	return out
}

// TestDefaults checks the options of an empty command line against
// flanneld's defaults, written out here rather than taken from agentopts.
func TestDefaults(t *testing.T) {
	s, err := Parse(nil, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := agentopts.Options{
		Etcd:                      agentopts.Etcd{Endpoints: []string{"http://127.0.0.1:4001", "http://127.0.0.1:2379"}},
		EtcdPrefix:                "/coreos.com/network",
		SubnetFile:                "/run/flannel/subnet.env",
		ForwardRules:              true,
		IPTablesResync:            5 * time.Second,
		HealthzIP:                 "0.0.0.0",
		RenewMargin:               60 * time.Minute,
		ResyncPeriod:              10 * time.Second,
		ConfigRetry:               5 * time.Second,
		KubeAnnotationPrefix:      "flannel.alpha.coreos.com",
		NetConfigPath:             "/etc/kube-flannel/net-conf.json",
		SetNodeNetworkUnavailable: true,
	}
	if !reflect.DeepEqual(s.Options, want) {
		t.Errorf("got  %+v\nwant %+v", s.Options, want)
	}
	if !reflect.DeepEqual(agentopts.Defaults(), want) {
		t.Errorf("agentopts.Defaults() = %+v", agentopts.Defaults())
	}
	if s.LogLevel != slog.LevelInfo || len(s.Warnings) != 0 {
		t.Errorf("log level %v, warnings %q", s.LogLevel, s.Warnings)
	}
}

// TestFlagSet checks that weftd has exactly flanneld's flags and weft's
// own, with flanneld's defaults.
func TestFlagSet(t *testing.T) {
	fs := flag.NewFlagSet("weftd", flag.ContinueOnError)
	Register(fs)
	want := map[string]string{"version": "false"}
	for _, c := range allFlags() {
		want[c.name] = c.def
	}
	got := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { got[f.Name] = f.DefValue })
	if !reflect.DeepEqual(got, want) {
		for n, d := range want {
			if g, ok := got[n]; !ok || g != d {
				t.Errorf("flag -%s: default %q (registered %v), want %q", n, g, ok, d)
			}
		}
		for n := range got {
			if _, ok := want[n]; !ok {
				t.Errorf("flag -%s is not in the table", n)
			}
		}
	}
}

// TestEveryFlag gives each flag on the command line, with two dashes and
// with one, and as its FLANNELD_* variable: each form is accepted and has
// the same effect.
func TestEveryFlag(t *testing.T) {
	for _, c := range allFlags() {
		want := agentopts.Defaults()
		if c.want != nil {
			c.want(&want)
		}
		level := c.level
		if level == 0 {
			level = slog.LevelInfo
		}
		forms := map[string]struct {
			args, env []string
		}{
			"--" + c.name:     {args: []string{"--" + c.name + "=" + c.value}},
			"-" + c.name:      {args: []string{"-" + c.name + "=" + c.value}},
			EnvName(c.name):   {env: environ(EnvName(c.name), c.value)},
			"separate value":  {args: []string{"--" + c.name, c.value}},
			"env and default": {env: environ(EnvName(c.name), c.value, "FLANNELD_UNRELATED_EMPTY", "")},
		}
		for form, in := range forms {
			if form == "separate value" && (c.def == "true" || c.def == "false") {
				continue // a boolean takes its value only after '='
			}
			s, err := Parse(in.args, in.env, io.Discard)
			if err != nil {
				t.Errorf("%s: %s: %v", c.name, form, err)
				continue
			}
			if !reflect.DeepEqual(s.Options, want) {
				t.Errorf("%s: %s:\ngot  %+v\nwant %+v", c.name, form, s.Options, want)
			}
			if s.LogLevel != level {
				t.Errorf("%s: %s: log level %v, want %v", c.name, form, s.LogLevel, level)
			}
			wantWarn := 0
			if c.name == "net-config-path" {
				wantWarn = 1 // no effect without --kube-subnet-mgr
			}
			if len(s.Warnings) != wantWarn {
				t.Errorf("%s: %s: warnings %q", c.name, form, s.Warnings)
			}
		}
	}
}

func TestEnvName(t *testing.T) {
	for flagName, env := range map[string]string{
		"subnet-lease-renew-margin": "FLANNELD_SUBNET_LEASE_RENEW_MARGIN",
		"iface":                     "FLANNELD_IFACE",
		"ip-masq":                   "FLANNELD_IP_MASQ",
		"v":                         "FLANNELD_V",
		"log_backtrace_at":          "FLANNELD_LOG_BACKTRACE_AT",
	} {
		if got := EnvName(flagName); got != env {
			t.Errorf("EnvName(%q) = %q, want %q", flagName, got, env)
		}
	}
}

// TestSysconfig reads a sysconfig file in flannel's style, with empty
// values and one bad value, as systemd's EnvironmentFile hands it over.
func TestSysconfig(t *testing.T) {
	const sysconfig = `# /etc/sysconfig/flanneld
FLANNELD_ETCD_ENDPOINTS=https://192.0.2.10:2379,https://192.0.2.11:2379
FLANNELD_ETCD_PREFIX=/coreos.com/network
FLANNELD_ETCD_KEYFILE=
FLANNELD_ETCD_CERTFILE=
FLANNELD_ETCD_CAFILE=
FLANNELD_IFACE=
FLANNELD_IFACE_REGEX=
FLANNELD_PUBLIC_IP=
FLANNELD_IP_MASQ=true
FLANNELD_SUBNET_LEASE_RENEW_MARGIN=soon
FLANNELD_HEALTHZ_PORT=
FLANNELD_V=
`
	s, err := Parse(nil, sysconfigEnv(t, strings.NewReader(sysconfig)), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := agentopts.Defaults()
	want.Etcd.Endpoints = []string{"https://192.0.2.10:2379", "https://192.0.2.11:2379"}
	want.IPMasq = true
	if !reflect.DeepEqual(s.Options, want) {
		t.Errorf("got  %+v\nwant %+v", s.Options, want)
	}
	if len(s.Warnings) != 1 || !strings.Contains(s.Warnings[0], `FLANNELD_SUBNET_LEASE_RENEW_MARGIN="soon"`) ||
		!strings.Contains(s.Warnings[0], `keeps its default "60"`) {
		t.Errorf("warnings %q, want one for FLANNELD_SUBNET_LEASE_RENEW_MARGIN", s.Warnings)
	}
}

// TestDeploySysconfig parses the example weft ships, without a warning.
func TestDeploySysconfig(t *testing.T) {
	f, err := os.Open("../../deploy/systemd/weftd.sysconfig")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := Parse(nil, sysconfigEnv(t, f), io.Discard)
	if err != nil || len(s.Warnings) != 0 {
		t.Errorf("deploy/systemd/weftd.sysconfig: %v, warnings %q", err, s.Warnings)
	}
	if !s.Options.IPMasq || len(s.Options.Etcd.Endpoints) != 3 {
		t.Errorf("deploy/systemd/weftd.sysconfig: %+v", s.Options)
	}
}

// sysconfigEnv reads KEY=value lines as systemd's EnvironmentFile= does
// for these simple files: comments and blank lines skipped.
func sysconfigEnv(t *testing.T, r io.Reader) []string {
	t.Helper()
	var env []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !strings.Contains(line, "=") {
			t.Fatalf("sysconfig line %q", line)
		}
		env = append(env, line)
	}
	return env
}

func TestEnv(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		env   []string
		check func(s Settings) bool
		warn  []string // each a substring of one warning, in order
	}{
		{
			name: "the command line wins",
			args: []string{"--iface", "eth1", "--healthz-port=8471"},
			env:  environ("FLANNELD_IFACE", "eth9", "FLANNELD_HEALTHZ_PORT", "1", "FLANNELD_SUBNET_FILE", "/tmp/s.env"),
			check: func(s Settings) bool {
				return slices.Equal(s.Options.Iface.Ifaces, []string{"eth1"}) && s.Options.HealthzPort == 8471 && s.Options.SubnetFile == "/tmp/s.env"
			},
		},
		{
			name: "a repeatable flag takes the whole value as one entry",
			env:  environ("FLANNELD_IFACE", "eth0,eth1", "FLANNELD_IFACE_REGEX", "^en,^eth"),
			check: func(s Settings) bool {
				return slices.Equal(s.Options.Iface.Ifaces, []string{"eth0,eth1"}) && slices.Equal(s.Options.Iface.Regexes, []string{"^en,^eth"})
			},
		},
		{
			name:  "the first of duplicate variables wins, as with getenv",
			env:   environ("FLANNELD_ETCD_PREFIX", "/a", "FLANNELD_ETCD_PREFIX", "/b"),
			check: func(s Settings) bool { return s.Options.EtcdPrefix == "/a" },
		},
		{
			name: "bad values keep their defaults, each a warning",
			env: environ(
				"FLANNELD_IP_MASQ", "yes please",
				"FLANNELD_HEALTHZ_PORT", "http",
				"FLANNELD_PUBLIC_IP", "2001:db8::1",
				"FLANNELD_RESYNC_PERIOD", "10",
				"FLANNELD_LOG_LEVEL", "loud",
				"FLANNELD_V", "high",
				"FLANNELD_VMODULE", "main",
				"FLANNELD_LOG_BACKTRACE_AT", "main.go",
			),
			check: func(s Settings) bool {
				return reflect.DeepEqual(s.Options, agentopts.Defaults()) && s.LogLevel == slog.LevelInfo
			},
			// In flag order (sorted by name).
			warn: []string{
				`FLANNELD_HEALTHZ_PORT="http": parse error; ignored, --healthz-port keeps its default "0"`,
				`FLANNELD_IP_MASQ="yes please": parse error; ignored, --ip-masq keeps its default "false"`,
				`FLANNELD_LOG_LEVEL="loud"`,
				`FLANNELD_LOG_BACKTRACE_AT="main.go"`,
				`FLANNELD_PUBLIC_IP="2001:db8::1": not an IPv4 address`,
				`FLANNELD_RESYNC_PERIOD="10"`,
				`FLANNELD_V="high"`,
				`FLANNELD_VMODULE="main": syntax error`,
			},
		},
		{
			name:  "a variable for no flag is a warning; an empty one is ignored",
			env:   environ("FLANNELD_NO_SUCH_FLAG", "1", "FLANNELD_ALSO_NOTHING", "", "OTHER", "x"),
			check: func(s Settings) bool { return true },
			warn:  []string{`FLANNELD_NO_SUCH_FLAG="1": weftd has no flag --no-such-flag; ignored`},
		},
		{
			name:  "FLANNELD_VERSION has no effect",
			env:   environ("FLANNELD_VERSION", "true"),
			check: func(s Settings) bool { return true },
			warn:  []string{"FLANNELD_VERSION=\"true\" has no effect"},
		},
		{
			name:  "-v 1 means debug",
			args:  []string{"-v=1"},
			check: func(s Settings) bool { return s.LogLevel == slog.LevelDebug },
		},
		{
			name:  "-v 0 means info",
			args:  []string{"-v", "0"},
			check: func(s Settings) bool { return s.LogLevel == slog.LevelInfo },
		},
		{
			name:  "--log-level wins over -v",
			args:  []string{"-v=4", "--log-level=warn"},
			check: func(s Settings) bool { return s.LogLevel == slog.LevelWarn },
		},
		{
			name:  "FLANNELD_LOG_LEVEL wins over -v",
			args:  []string{"-v=4"},
			env:   environ("FLANNELD_LOG_LEVEL", "error"),
			check: func(s Settings) bool { return s.LogLevel == slog.LevelError },
		},
		{
			name:  "--net-config-file with the Kubernetes store",
			args:  []string{"--kube-subnet-mgr", "--net-config-file=/etc/n.json"},
			check: func(s Settings) bool { return s.Options.KubeSubnetMgr && s.Options.NetConfigFile == "/etc/n.json" },
			warn:  []string{"--net-config-file /etc/n.json has no effect with --kube-subnet-mgr"},
		},
	}
	for _, tt := range tests {
		s, err := Parse(tt.args, tt.env, io.Discard)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if !tt.check(s) {
			t.Errorf("%s: options %+v, log level %v", tt.name, s.Options, s.LogLevel)
		}
		if len(s.Warnings) != len(tt.warn) {
			t.Errorf("%s: warnings %q, want %d", tt.name, s.Warnings, len(tt.warn))
			continue
		}
		for i, w := range tt.warn {
			if !strings.Contains(s.Warnings[i], w) {
				t.Errorf("%s: warning %d = %q, want it to contain %q", tt.name, i, s.Warnings[i], w)
			}
		}
	}
}

// TestKubeFlannelArgs parses the container arguments of flannel's
// kube-flannel.yml.
func TestKubeFlannelArgs(t *testing.T) {
	s, err := Parse([]string{"--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"}, environ("POD_NAME", "kube-flannel-ds-x", "POD_NAMESPACE", "kube-flannel"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := agentopts.Defaults()
	want.IPMasq, want.KubeSubnetMgr, want.HealthzPort = true, true, 8081
	if !reflect.DeepEqual(s.Options, want) || len(s.Warnings) != 0 {
		t.Errorf("got  %+v (warnings %q)\nwant %+v", s.Options, s.Warnings, want)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		args    []string
		env     []string
		want    string
		invalid bool // ErrInvalid: parses, but weftd cannot run with it
	}{
		{[]string{"--no-such-flag"}, nil, "flag provided but not defined: -no-such-flag", false},
		{[]string{"extra"}, nil, `unexpected argument "extra"`, false},
		{[]string{"--public-ip", "nonsense"}, nil, `invalid value "nonsense" for flag -public-ip: not an IP address`, false},
		{[]string{"--iface-can-reach", "::1"}, nil, "not an IPv4 address", false},
		{[]string{"--public-ipv6", "192.0.2.1"}, nil, "not an IPv6 address", false},
		{[]string{"-v"}, nil, "flag needs an argument: -v", false},
		{[]string{"-vmodule=main=-1"}, nil, "negative value for vmodule level", false},
		{[]string{"-log_backtrace_at=main.go:0"}, nil, "negative or zero value", false},
		{[]string{"--log-level", "loud"}, nil, "want debug, info, warn or error", false},
		{[]string{"--healthz-port", "70000"}, nil, "--healthz-port 70000", true},
		{[]string{"--healthz-port", "8471", "--healthz-ip", "localhost"}, nil, `--healthz-ip "localhost"`, true},
		{[]string{"--etcd-endpoints", " , "}, nil, "--etcd-endpoints: no endpoint given", true},
		{[]string{"--resync-period", "0s"}, nil, "--resync-period 0s", true},
		{[]string{"--iptables-resync", "0"}, nil, "--iptables-resync 0", true},
		{[]string{"--subnet-lease-renew-margin", "0"}, nil, "--subnet-lease-renew-margin 0: want 1 to 1439 minutes", true},
		{[]string{"--subnet-lease-renew-margin", "1440"}, nil, "--subnet-lease-renew-margin 1440", true},
		{nil, environ("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "-5"), "--subnet-lease-renew-margin -5", true},
	}
	for _, tt := range tests {
		var out strings.Builder
		s, err := Parse(tt.args, tt.env, &out)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v %v: err = %v, want %q", tt.args, tt.env, err, tt.want)
			continue
		}
		if errors.Is(err, ErrInvalid) != tt.invalid {
			t.Errorf("%v: errors.Is(%v, ErrInvalid) = %v", tt.args, err, !tt.invalid)
		}
		if strings.HasPrefix(tt.want, "flag provided") && !strings.Contains(out.String(), "Usage: weftd") {
			t.Errorf("unknown flag: no usage printed:\n%s", out.String())
		}
		if len(s.Warnings) != 0 {
			t.Errorf("%v: warnings %q", tt.args, s.Warnings)
		}
	}
	// The margin's bounds are accepted.
	for _, m := range []string{"1", "1439"} {
		if _, err := Parse([]string{"--subnet-lease-renew-margin=" + m}, nil, io.Discard); err != nil {
			t.Errorf("--subnet-lease-renew-margin=%s: %v", m, err)
		}
	}
	// Warnings survive an error.
	s, err := Parse([]string{"--iptables-resync=0"}, environ("FLANNELD_IP_MASQ", "perhaps"), io.Discard)
	if err == nil || len(s.Warnings) != 1 {
		t.Errorf("err %v, warnings %q", err, s.Warnings)
	}
	// Without etcd, no etcd endpoint is needed.
	if _, err := Parse([]string{"--kube-subnet-mgr", "--etcd-endpoints="}, nil, io.Discard); err != nil {
		t.Errorf("--kube-subnet-mgr without etcd endpoints: %v", err)
	}
}

func TestHelpAndVersion(t *testing.T) {
	var out strings.Builder
	if _, err := Parse([]string{"--help"}, nil, &out); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: err = %v", err)
	}
	for _, c := range allFlags() {
		if !strings.Contains(out.String(), "-"+c.name+" ") && !strings.Contains(out.String(), "-"+c.name+"\n") {
			t.Errorf("usage lacks -%s", c.name)
		}
	}
	// --version works even when the environment has a bad value, and is
	// answered before the environment is read.
	if _, err := Parse([]string{"--version"}, environ("FLANNELD_IP_MASQ", "maybe"), io.Discard); !errors.Is(err, ErrVersion) {
		t.Errorf("--version: err = %v", err)
	}
	if _, err := Parse([]string{"-version"}, nil, io.Discard); !errors.Is(err, ErrVersion) {
		t.Errorf("-version: err = %v", err)
	}
}

// TestRegisterBeside checks that another tool's flag set can hold weftd's
// flags beside its own, and that only weftd's are read from FLANNELD_*.
func TestRegisterBeside(t *testing.T) {
	fs := flag.NewFlagSet("weft doctor", flag.ContinueOnError)
	jsonOut := fs.Bool("json", false, "")
	f := Register(fs)
	if err := fs.Parse([]string{"--subnet-file=/tmp/a.env", "--iface", "eth1"}); err != nil {
		t.Fatal(err)
	}
	f.ApplyEnv(environ("FLANNELD_JSON", "true", "FLANNELD_SUBNET_FILE", "/tmp/b.env", "FLANNELD_HEALTHZ_PORT", "8471"))
	s, err := f.Settings()
	if err != nil {
		t.Fatal(err)
	}
	if *jsonOut {
		t.Error("FLANNELD_JSON set doctor's own --json")
	}
	if len(s.Warnings) != 1 || !strings.Contains(s.Warnings[0], "FLANNELD_JSON") {
		t.Errorf("warnings %q, want one for FLANNELD_JSON", s.Warnings)
	}
	if s.Options.SubnetFile != "/tmp/a.env" || s.Options.HealthzPort != 8471 || !slices.Equal(s.Options.Iface.Ifaces, []string{"eth1"}) {
		t.Errorf("settings %+v", s.Options)
	}
}

// TestOverride lays a tool's flags over an agent's command line and
// environment: the tool's flags win, a repeatable one as a whole.
func TestOverride(t *testing.T) {
	agent, err := FromCommandLine(
		[]string{"--iface", "eth0", "--iface", "eth1", "--subnet-file=/run/a.env", "--healthz-port=8471", "-v=2"},
		environ("FLANNELD_ETCD_PREFIX", "/weft", "FLANNELD_IP_MASQ", "true"))
	if err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("weft doctor", flag.ContinueOnError)
	fs.Bool("json", false, "")
	given := Register(fs)
	if err := fs.Parse([]string{"--json", "--iface=eth9", "--etcd-prefix=/other", "--ip-masq=false", "--log-level=error"}); err != nil {
		t.Fatal(err)
	}
	if err := agent.Override(given); err != nil {
		t.Fatal(err)
	}
	s, err := agent.Settings()
	if err != nil {
		t.Fatal(err)
	}
	o := s.Options
	if !slices.Equal(o.Iface.Ifaces, []string{"eth9"}) || o.EtcdPrefix != "/other" || o.IPMasq ||
		o.SubnetFile != "/run/a.env" || o.HealthzPort != 8471 || s.LogLevel != slog.LevelError {
		t.Errorf("override: %+v, log level %v", o, s.LogLevel)
	}

	// Nothing given: the agent's settings as they are.
	agent, _ = FromCommandLine([]string{"--iface=eth0"}, environ("FLANNELD_IP_MASQ", "true"))
	none := Register(flag.NewFlagSet("weft doctor", flag.ContinueOnError))
	if err := agent.Override(none); err != nil {
		t.Fatal(err)
	}
	if s, _ := agent.Settings(); !slices.Equal(s.Options.Iface.Ifaces, []string{"eth0"}) || !s.Options.IPMasq {
		t.Errorf("no override: %+v", s.Options)
	}

	if _, err := FromCommandLine([]string{"--no-such-flag"}, nil); err == nil {
		t.Error("FromCommandLine accepted an unknown flag")
	}
}
