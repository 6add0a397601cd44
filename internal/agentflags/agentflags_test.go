package agentflags

import (
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/daemon"
	"github.com/weft-net/weft/internal/lease/etcdstore"
	"github.com/weft-net/weft/internal/netif"
)

func env(kv ...string) func(string) (string, bool) {
	m := map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestDefaults(t *testing.T) {
	s, err := Parse(nil, env(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := daemon.Options{
		Etcd:           etcdstore.ClientOptions{Endpoints: []string{"http://127.0.0.1:4001", "http://127.0.0.1:2379"}},
		EtcdPrefix:     "/coreos.com/network",
		SubnetFile:     "/run/flannel/subnet.env",
		ForwardRules:   true,
		IPTablesResync: 5 * time.Second,
		HealthzIP:      "0.0.0.0",
		RenewMargin:    60 * time.Minute,
		ResyncPeriod:   10 * time.Second,
	}
	if !reflect.DeepEqual(s.Options, want) {
		t.Errorf("got  %+v\nwant %+v", s.Options, want)
	}
	if s.LogLevel != slog.LevelInfo {
		t.Errorf("log level %v", s.LogLevel)
	}
}

func TestFlagsAndEnv(t *testing.T) {
	args := []string{
		"--etcd-endpoints=https://10.0.0.1:2379, https://10.0.0.2:2379",
		"-etcd-prefix", "/weft/network", // single dash, as flanneld accepts
		"--iface", "eth1", "--iface=10.0.0.5",
		"--iface-regex", "^en", "--iface-regex", `^10\.`,
		"--public-ip", "203.0.113.9",
		"--ip-masq",
		"--healthz-port", "8471",
		"--subnet-lease-renew-margin", "30",
		"--iptables-resync", "7",
		"--resync-period", "3s",
		"--log-level", "debug",
	}
	lookup := env(
		"FLANNELD_IFACE", "eth9", // the flag wins
		"FLANNELD_ETCD_CAFILE", "/etc/ca.pem",
		"FLANNELD_IFACE_CAN_REACH", "192.0.2.1",
		"FLANNELD_PUBLIC_IPV6", "2001:db8::9",
		"FLANNELD_SUBNET_FILE", "/tmp/s.env",
		"FLANNELD_IPTABLES_FORWARD_RULES", "false",
		"FLANNELD_NET_CONFIG_PATH", "/etc/kube-flannel/net-conf.json",
		"FLANNELD_HEALTHZ_PORT", "1", // the flag wins
	)
	s, err := Parse(args, lookup, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	o := s.Options
	want := daemon.Options{
		Etcd: etcdstore.ClientOptions{
			Endpoints: []string{"https://10.0.0.1:2379", "https://10.0.0.2:2379"},
			CAFile:    "/etc/ca.pem",
		},
		EtcdPrefix: "/weft/network",
		Iface: netif.Spec{
			Ifaces: []string{"eth1", "10.0.0.5"}, Regexes: []string{"^en", `^10\.`},
			CanReach: netip.MustParseAddr("192.0.2.1"), PublicIP: netip.MustParseAddr("203.0.113.9"),
		},
		PublicIPv6:     netip.MustParseAddr("2001:db8::9"),
		SubnetFile:     "/tmp/s.env",
		NetConfigPath:  "/etc/kube-flannel/net-conf.json",
		IPMasq:         true,
		ForwardRules:   false,
		IPTablesResync: 7 * time.Second,
		HealthzIP:      "0.0.0.0",
		HealthzPort:    8471,
		RenewMargin:    30 * time.Minute,
		ResyncPeriod:   3 * time.Second,
	}
	if !reflect.DeepEqual(o, want) {
		t.Errorf("got  %+v\nwant %+v", o, want)
	}
	if s.LogLevel != slog.LevelDebug {
		t.Errorf("log level %v", s.LogLevel)
	}
}

func TestEnvOnly(t *testing.T) {
	s, err := Parse(nil, env("FLANNELD_IFACE", "eth3", "FLANNELD_IP_MASQ", "true", "FLANNELD_ETCD_ENDPOINTS", "http://e:2379"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.Options.Iface.Ifaces, []string{"eth3"}) || !s.Options.IPMasq || s.Options.Etcd.Endpoints[0] != "http://e:2379" {
		t.Errorf("env not applied: %+v", s.Options)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"--no-such-flag"}, nil, "flag provided but not defined: -no-such-flag"},
		{[]string{"extra"}, nil, `unexpected argument "extra"`},
		{nil, []string{"FLANNELD_IP_MASQ", "yes please"}, `FLANNELD_IP_MASQ="yes please": parse error`},
		{nil, []string{"FLANNELD_HEALTHZ_PORT", "http"}, `FLANNELD_HEALTHZ_PORT="http"`},
		{nil, []string{"FLANNELD_PUBLIC_IP", "2001:db8::1"}, `FLANNELD_PUBLIC_IP="2001:db8::1": not an IPv4 address`},
		{[]string{"--public-ip", "nonsense"}, nil, `invalid value "nonsense" for flag -public-ip: not an IP address`},
		{[]string{"--iface-can-reach", "::1"}, nil, "not an IPv4 address"},
		{[]string{"--kube-subnet-mgr"}, nil, "--kube-subnet-mgr: the Kubernetes subnet manager is not supported yet"},
		{[]string{"--healthz-port", "70000"}, nil, "--healthz-port 70000"},
		{[]string{"--etcd-endpoints", " , "}, nil, "--etcd-endpoints: no endpoint given"},
		{[]string{"--log-level", "loud"}, nil, "want debug, info, warn or error"},
		{[]string{"--resync-period", "0s"}, nil, "--resync-period 0s"},
	}
	for _, tt := range tests {
		var out strings.Builder
		_, err := Parse(tt.args, env(tt.env...), &out)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v %v: err = %v, want %q", tt.args, tt.env, err, tt.want)
		}
		if strings.HasPrefix(tt.want, "flag provided") && !strings.Contains(out.String(), "Usage: weftd") {
			t.Errorf("unknown flag: no usage printed:\n%s", out.String())
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	var out strings.Builder
	if _, err := Parse([]string{"--help"}, env(), &out); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: err = %v", err)
	}
	for _, name := range []string{"etcd-endpoints", "iface-regex", "subnet-lease-renew-margin", "healthz-port", "resync-period"} {
		if !strings.Contains(out.String(), "-"+name) {
			t.Errorf("usage lacks -%s", name)
		}
	}
	// --version works even when the environment has a bad value.
	if _, err := Parse([]string{"--version"}, env("FLANNELD_IP_MASQ", "maybe"), io.Discard); !errors.Is(err, ErrVersion) {
		t.Errorf("--version: err = %v", err)
	}
}

func TestEnvName(t *testing.T) {
	if got := EnvName("subnet-lease-renew-margin"); got != "FLANNELD_SUBNET_LEASE_RENEW_MARGIN" {
		t.Error(got)
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
	err := f.ApplyEnv(fs, env("FLANNELD_JSON", "true", "FLANNELD_SUBNET_FILE", "/tmp/b.env", "FLANNELD_HEALTHZ_PORT", "8471"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := f.Settings()
	if err != nil {
		t.Fatal(err)
	}
	if *jsonOut {
		t.Error("FLANNELD_JSON set doctor's own --json")
	}
	if s.Options.SubnetFile != "/tmp/a.env" || s.Options.HealthzPort != 8471 || !reflect.DeepEqual(s.Options.Iface.Ifaces, []string{"eth1"}) {
		t.Errorf("settings %+v", s.Options)
	}
}
