package doctor

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/agentflags"
)

// fakeProc is a /proc tree with the processes doctor looks at: the
// caller's namespace is net:[1].
type fakeProc struct {
	t    *testing.T
	root string
}

func newFakeProc(t *testing.T) *fakeProc {
	p := &fakeProc{t: t, root: t.TempDir()}
	p.proc("self", "", "net:[1]", nil, nil)
	return p
}

func (p *fakeProc) proc(pid, comm, netns string, args, env []string) {
	dir := filepath.Join(p.root, pid)
	if err := os.MkdirAll(filepath.Join(dir, "ns"), 0o755); err != nil {
		p.t.Fatal(err)
	}
	if err := os.Symlink(netns, filepath.Join(dir, "ns", "net")); err != nil {
		p.t.Fatal(err)
	}
	nul := func(ss []string) []byte { return []byte(strings.Join(ss, "\x00") + "\x00") }
	for name, b := range map[string][]byte{"comm": []byte(comm + "\n"), "cmdline": nul(args), "environ": nul(env)} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			p.t.Fatal(err)
		}
	}
}

// doctorFlags are doctor's command line, parsed as cmd/weft does.
func doctorFlags(t *testing.T, args ...string) *agentflags.Flags {
	fs := flag.NewFlagSet("weft doctor", flag.ContinueOnError)
	fs.Bool("json", false, "")
	af := agentflags.Register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return af
}

func TestSettings(t *testing.T) {
	weftd := []string{"/usr/local/bin/weftd", "--iface=eth1", "--iface=eth2", "--healthz-port=8471", "--subnet-file=/run/weft/subnet.env"}
	weftdEnv := []string{"FLANNELD_ETCD_ENDPOINTS=https://192.0.2.10:2379", "FLANNELD_IP_MASQ=true"}
	doctorEnv := []string{"FLANNELD_ETCD_PREFIX=/doctor", "FLANNELD_HEALTHZ_PORT=1"}

	t.Run("the weftd here", func(t *testing.T) {
		p := newFakeProc(t)
		p.proc("100", "weftd", "net:[1]", weftd, weftdEnv)
		p.proc("200", "weftd", "net:[2]", []string{"weftd", "--iface=lab0"}, nil) // another namespace's
		p.proc("300", "bash", "net:[1]", []string{"bash"}, nil)
		s, from, err := settingsFrom(p.root, doctorFlags(t, "--json"), doctorEnv)
		if err != nil {
			t.Fatal(err)
		}
		o := s.Options
		if from != "weftd pid 100's command line and environment" ||
			!slices.Equal(o.Iface.Ifaces, []string{"eth1", "eth2"}) || o.HealthzPort != 8471 || o.SubnetFile != "/run/weft/subnet.env" ||
			!slices.Equal(o.Etcd.Endpoints, []string{"https://192.0.2.10:2379"}) || !o.IPMasq || o.EtcdPrefix != "/coreos.com/network" {
			t.Errorf("from %s: %+v", from, o)
		}
	})

	t.Run("doctor's flags on top", func(t *testing.T) {
		p := newFakeProc(t)
		p.proc("100", "weftd", "net:[1]", weftd, weftdEnv)
		s, _, err := settingsFrom(p.root, doctorFlags(t, "--iface=eth9", "--ip-masq=false"), doctorEnv)
		if err != nil {
			t.Fatal(err)
		}
		o := s.Options
		if !slices.Equal(o.Iface.Ifaces, []string{"eth9"}) || o.IPMasq || o.HealthzPort != 8471 {
			t.Errorf("%+v", o)
		}
	})

	t.Run("no weftd here", func(t *testing.T) {
		p := newFakeProc(t)
		p.proc("200", "weftd", "net:[2]", weftd, weftdEnv)
		s, from, err := settingsFrom(p.root, doctorFlags(t, "--iface=eth9"), doctorEnv)
		if err != nil {
			t.Fatal(err)
		}
		o := s.Options
		if from != "doctor's flags and environment" || !slices.Equal(o.Iface.Ifaces, []string{"eth9"}) || o.EtcdPrefix != "/doctor" || o.HealthzPort != 1 {
			t.Errorf("from %s: %+v", from, o)
		}
	})

	t.Run("two weftds here", func(t *testing.T) {
		p := newFakeProc(t)
		p.proc("100", "weftd", "net:[1]", weftd, weftdEnv)
		p.proc("101", "weftd", "net:[1]", []string{"weftd"}, nil)
		if _, from, _ := settingsFrom(p.root, doctorFlags(t), nil); from != "doctor's flags and environment" {
			t.Errorf("from %s", from)
		}
	})

	t.Run("a weftd command line doctor cannot read", func(t *testing.T) {
		p := newFakeProc(t)
		p.proc("100", "weftd", "net:[1]", []string{"weftd", "--from-the-future"}, nil)
		s, from, err := settingsFrom(p.root, doctorFlags(t, "--iface=eth9"), nil)
		if err != nil || from != "doctor's flags and environment" || !slices.Equal(s.Options.Iface.Ifaces, []string{"eth9"}) {
			t.Errorf("from %s: %+v, %v", from, s.Options, err)
		}
		if len(s.Warnings) != 1 || !strings.Contains(s.Warnings[0], "cannot read the settings of weftd pid 100") {
			t.Errorf("warnings %q", s.Warnings)
		}
	})
}
