package main

import (
	"os"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/clitest"
)

var weftd = clitest.Command(".", "weftd")

func TestMain(m *testing.M) { os.Exit(clitest.Main(m, weftd)) }

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
		clitest.CheckVersion(t, args, clitest.Run(t, bin, args...))
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
