package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/clitest"
	"github.com/weft-net/weft/internal/subnetenv"
)

// The plugin is exec'd for every pod; it must stay free of the heavy
// clients (start-up time, size).
func TestNoHeavyImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "github.com/containernetworking/cni/pkg/skel") {
		t.Fatalf("go list -deps gave %d packages without cni/pkg/skel: not the plugin's list", len(deps))
	}
	for _, d := range deps {
		for _, banned := range []string{"k8s.io/client-go", "go.etcd.io/etcd"} {
			if strings.HasPrefix(d, banned) {
				t.Errorf("weft-cni depends on %s", d)
			}
		}
	}
}

// No production binary carries test code: the Go testing package, the
// project's test helpers, or the CNI test rig with the plugins' testutils
// (which the lab's CNI benchmark once pulled into weft).
func TestProductionImports(t *testing.T) {
	const module = "github.com/weft-net/weft/"
	for _, tc := range []struct {
		pkg, must string // must: a package proving the list is the binary's
	}{
		{"../weft", module + "internal/lab"},
		{"../weftd", module + "internal/daemon"},
		{".", module + "internal/cni"},
	} {
		out, err := exec.Command("go", "list", "-deps", tc.pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", tc.pkg, err)
		}
		deps := strings.Fields(string(out))
		if !slices.Contains(deps, tc.must) {
			t.Fatalf("go list -deps %s gave %d packages without %s", tc.pkg, len(deps), tc.must)
		}
		for _, d := range deps {
			last := d[strings.LastIndex(d, "/")+1:]
			switch {
			case d == "testing" || strings.HasPrefix(d, "testing/"),
				strings.HasSuffix(d, "/testutils"),
				strings.HasPrefix(d, module) && (strings.HasSuffix(last, "test") || last == "cnirig"):
				t.Errorf("%s depends on %s", tc.pkg, d)
			}
		}
	}
}

// The plugin under the name flannel's conflist runs it by.
var pluginBin = clitest.Command(".", "flannel")

func plugin(t *testing.T) string { return pluginBin.Path(t) }

func TestMain(m *testing.M) { os.Exit(clitest.Main(m, pluginBin)) }

// Run by a person rather than a runtime (no CNI_COMMAND), as nobody: help
// and version on stdout, anything else one line on stderr and exit 2.
func TestCommandLine(t *testing.T) {
	bin := plugin(t)
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		r := clitest.Run(t, bin, args...)
		clitest.CheckHelp(t, args, r, "Usage: weft-cni\n")
		if !strings.Contains(r.Stdout, "CNI_COMMAND") || !strings.Contains(r.Stdout, "/run/flannel/subnet.env") {
			t.Errorf("%q: usage says nothing of CNI_COMMAND or the subnet file: %s", args, r.Stdout)
		}
	}
	clitest.CheckVersion(t, []string{"--version"}, clitest.Run(t, bin, "--version"))
	clitest.CheckUsageError(t, []string{"--no-such-flag"}, clitest.Run(t, bin, "--no-such-flag"),
		"weft-cni: unknown flag", "no-such-flag", "(see weft-cni --help)")
	clitest.CheckUsageError(t, []string{"add"}, clitest.Run(t, bin, "add"),
		"weft-cni: unknown argument", `"add"`, "CNI_COMMAND")
	// Without CNI_COMMAND or arguments: what skel prints, with the version.
	if r := clitest.Run(t, bin); r.Code != 0 || !strings.Contains(r.Stderr, "CNI plugin weft (flannel-compatible) "+clitest.Version) {
		t.Errorf("no arguments: %s", r)
	}
}

type cniError struct {
	CNIVersion string `json:"cniVersion"`
	Code       uint   `json:"code"`
	Msg        string `json:"msg"`
}

// run execs the plugin as a runtime would and returns its stdout and exit
// status.
func run(t *testing.T, command, stdin string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(plugin(t))
	cmd.Env = []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=c1",
		"CNI_NETNS=/var/run/netns/none",
		"CNI_IFNAME=eth0",
		"CNI_PATH=/nonexistent",
	}
	cmd.Stdin = strings.NewReader(stdin)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	err := cmd.Run()
	return stdout.Bytes(), err
}

func wantError(t *testing.T, command, stdin string, code uint, msg string) {
	t.Helper()
	out, err := run(t, command, stdin)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Errorf("%s: exit %v, want non-zero; stdout %s", command, err, out)
	}
	var e cniError
	if jerr := json.Unmarshal(out, &e); jerr != nil {
		t.Fatalf("%s: stdout is not a CNI error object: %v: %q", command, jerr, out)
	}
	if e.Code != code || !strings.Contains(e.Msg, msg) {
		t.Errorf("%s: got code %d %q, want code %d containing %q", command, e.Code, e.Msg, code, msg)
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	subnetFile := filepath.Join(dir, "subnet.env")
	dataDir := filepath.Join(dir, "data")
	conf := func(v, extra string) string {
		return `{"cniVersion":"` + v + `","name":"cbr0","type":"flannel","subnetFile":"` + subnetFile +
			`","dataDir":"` + dataDir + `"` + extra + `}`
	}

	wantError(t, "ADD", `this is not JSON`, 6, "")
	wantError(t, "ADD", conf("0.3.1", ""), 11,
		"subnet file "+subnetFile+" not found: is weftd running on this node?")
	wantError(t, "STATUS", conf("1.1.0", ""), 50, "is weftd running on this node?")

	env := subnetenv.Env{
		Network: netip.MustParsePrefix("10.244.0.0/16"),
		Subnet:  netip.MustParsePrefix("10.244.3.1/24"),
		MTU:     1450,
		IPMasq:  true,
	}
	if err := subnetenv.Write(subnetFile, env); err != nil {
		t.Fatal(err)
	}
	wantError(t, "ADD", conf("0.3.1", `,"delegate":{"name":"x"}`), 7, `delegate must not set "name"`)
	wantError(t, "ADD", conf("1.0.0", `,"delegate":{"ipam":{}}`), 7, `delegate must not set "ipam"`)
	// The delegate cannot be found: nothing may be left behind.
	wantError(t, "ADD", conf("1.0.0", ""), 50, `delegate plugin "bridge" is not installed`)
	if ents, _ := os.ReadDir(dataDir); len(ents) != 0 {
		t.Errorf("failed ADDs left %d saved configs", len(ents))
	}
	wantError(t, "CHECK", conf("0.3.1", ""), 1, "")
	wantError(t, "STATUS", conf("1.1.0", ""), 50, `delegate plugin "bridge" is not installed`)
	// DEL of a container never added succeeds, even when the delegate
	// cannot run.
	if out, err := run(t, "DEL", conf("1.0.0", "")); err != nil {
		t.Errorf("DEL of an unknown container: %v %s", err, out)
	}
}

func TestVersion(t *testing.T) {
	out, err := run(t, "VERSION", `{"cniVersion":"1.1.0"}`)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatal(err)
	}
	want := []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}
	if !slices.Equal(v.SupportedVersions, want) {
		t.Errorf("supported versions %v, want %v", v.SupportedVersions, want)
	}
}
