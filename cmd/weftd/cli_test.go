package main

import (
	"os"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/clitest"
)

// testVersion is linked into the test build as the Makefile links
// git describe's output.
const testVersion = "v0.0.0-7-gc0ffee1-test"

var weftd = &clitest.Binary{Pkg: ".", Name: "weftd", LDFlags: "-X main.version=" + testVersion}

func TestMain(m *testing.M) {
	code := m.Run()
	weftd.Remove()
	os.Exit(code)
}

// weftd's command line as a person meets it, without root: help and
// version on stdout with exit 0; a command line it cannot take is one line
// on stderr and exit 2, before anything starts.
func TestCommandLine(t *testing.T) {
	bin := weftd.Path(t)
	for _, args := range [][]string{{"--help"}, {"-h"}, {"-help"}} {
		r := clitest.Run(t, bin, args...)
		clitest.CheckHelp(t, args, r, "Usage: weftd [flags]\n")
		if !strings.Contains(r.Stdout, "-etcd-endpoints") || !strings.Contains(r.Stdout, "FLANNELD_") {
			t.Errorf("%q: usage lacks the flags or the environment: %s", args, r.Stdout)
		}
	}
	for _, args := range [][]string{{"--version"}, {"-version"}} {
		if r := clitest.Run(t, bin, args...); r.Code != 0 || r.Stdout != testVersion+"\n" || r.Stderr != "" {
			t.Errorf("%q: %s; want exit 0 and %q on stdout", args, r, testVersion)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--no-such-flag"}, "no-such-flag"},
		{[]string{"--healthz-port"}, "healthz-port"},
		{[]string{"--ip-masq=maybe"}, "ip-masq"},
		{[]string{"run"}, `"run"`},
	} {
		r := clitest.Run(t, bin, tc.args...)
		clitest.CheckUsageError(t, tc.args, r, "weftd: ", tc.want, "(see weftd --help)")
	}
}
