package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const unitFile = "../../deploy/systemd/weftd.service"

// unitKeys reads a systemd unit as section.Key -> values, in order.
func unitKeys(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: not a key=value line: %q", path, line)
			}
			keys[section+"."+k] = append(keys[section+"."+k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return keys
}

// The unit as shipped: Type=notify with a watchdog, ordered before the
// container runtime and kubelet without being required by them, reading
// flanneld's environment files.
func TestSystemdUnit(t *testing.T) {
	keys := unitKeys(t, unitFile)
	want := map[string]string{
		"Service.Type":     "notify",
		"Install.WantedBy": "multi-user.target",
		"Service.Restart":  "always",
	}
	for k, v := range want {
		if got := keys[k]; len(got) != 1 || got[0] != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if len(keys["Service.WatchdogSec"]) != 1 {
		t.Errorf("no WatchdogSec: weftd pets a watchdog nobody watches")
	}
	before := strings.Fields(strings.Join(keys["Unit.Before"], " "))
	for _, u := range []string{"containerd.service", "kubelet.service"} {
		if !slices.Contains(before, u) {
			t.Errorf("Before= %v lacks %s", before, u)
		}
	}
	for _, k := range []string{"Install.RequiredBy", "Unit.RequiredBy", "Install.RequisiteOf", "Unit.PartOf", "Unit.BindsTo"} {
		if v, ok := keys[k]; ok {
			t.Errorf("%s=%v: stopping weftd would stop or fail other units", k, v)
		}
	}
	env := keys["Service.EnvironmentFile"]
	for _, f := range []string{"-/etc/sysconfig/weftd", "-/etc/sysconfig/flanneld"} {
		if !slices.Contains(env, f) {
			t.Errorf("EnvironmentFile= %v lacks %s", env, f)
		}
	}
}

// systemd itself finds nothing to say about the unit, with ExecStart
// pointing at a real weftd.
func TestSystemdUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("needs systemd-analyze (Debian package systemd; make deps installs it)")
	}
	data, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	unit := strings.ReplaceAll(string(data), "ExecStart=/usr/local/bin/weftd", "ExecStart="+weftd.Path(t))
	if unit == string(data) {
		t.Fatal("unit has no ExecStart=/usr/local/bin/weftd")
	}
	path := filepath.Join(t.TempDir(), "weftd.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "weftd") {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
}
