package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/cni"
)

// TestInstallCNIFromConflist runs install-cni as weft.yml's init containers
// do: the plugin alone, then the conflist alone from a ConfigMap file.
func TestInstallCNIFromConflist(t *testing.T) {
	dir := t.TempDir()
	plugin := filepath.Join(dir, "weft-cni")
	if err := os.WriteFile(plugin, []byte("\x7fELF plugin"), 0o755); err != nil {
		t.Fatal(err)
	}
	bin, net := filepath.Join(dir, "opt/cni/bin"), filepath.Join(dir, "etc/cni/net.d")
	// The ConfigMap's cni-conf.json: flannel's conflist, pretty-printed.
	conf := "{\n  \"name\": \"cbr0\",\n  \"cniVersion\": \"0.3.1\",\n  \"plugins\": [{\"type\": \"flannel\"}]\n}\n"
	src := filepath.Join(dir, "etc/kube-flannel/cni-conf.json")
	if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}

	if err := runInstallCNI(context.Background(), []string{"--plugin=" + plugin, "--cni-bin-dir=" + bin, "--cni-conf-dir="}); err != nil {
		t.Fatalf("plugin only: %v", err)
	}
	if _, err := os.Stat(net); !os.IsNotExist(err) {
		t.Errorf("--cni-conf-dir= still touched %s: %v", net, err)
	}
	for _, n := range cni.PluginNames {
		got, err := os.ReadFile(filepath.Join(bin, n))
		if err != nil || string(got) != "\x7fELF plugin" {
			t.Errorf("%s: %q, %v", n, got, err)
		}
	}

	err := runInstallCNI(context.Background(), []string{"--cni-bin-dir=", "--cni-conf-dir=" + net,
		"--cni-conf-name=10-flannel.conflist", "--conflist=" + src})
	if err != nil {
		t.Fatalf("conflist only: %v", err)
	}
	got, err := os.ReadFile(filepath.Join(net, "10-flannel.conflist"))
	if err != nil || string(got) != conf {
		t.Errorf("installed conflist = %q, %v; want the file as given", got, err)
	}

	// A file that is no conflist is refused, and the installed one stays.
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"cniVersion":"0.3.1"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	err = runInstallCNI(context.Background(), []string{"--cni-bin-dir=", "--cni-conf-dir=" + net, "--conflist=" + bad})
	if err == nil || !strings.Contains(err.Error(), "conflist") {
		t.Errorf("bad conflist: err = %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(net, "10-flannel.conflist")); string(got) != conf {
		t.Errorf("a refused conflist replaced the installed one: %q", got)
	}
	if err := runInstallCNI(context.Background(), []string{"--cni-bin-dir=", "--cni-conf-dir=" + net, "--conflist=" + filepath.Join(dir, "missing")}); err == nil {
		t.Error("a missing --conflist file was not an error")
	}
}
