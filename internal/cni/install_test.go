package cni

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestInstall(t *testing.T) {
	dir := t.TempDir()
	plugin := filepath.Join(dir, "weft-cni")
	if err := os.WriteFile(plugin, []byte("\x7fELF plugin v1"), 0o700); err != nil {
		t.Fatal(err)
	}
	confDir := filepath.Join(dir, "etc", "cni", "net.d")
	binDir := filepath.Join(dir, "opt", "cni", "bin")
	o := InstallOptions{ConfDir: confDir, ConfName: DefaultConfName, BinDir: binDir, Plugin: plugin}
	if err := Install(o); err != nil {
		t.Fatal(err)
	}
	// The conflist is flannel's, byte for byte (design.md).
	got, err := os.ReadFile(filepath.Join(confDir, "10-flannel.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	const flannel = `{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}`
	if string(got) != flannel {
		t.Errorf("conflist\n got %s\nwant %s", got, flannel)
	}
	for _, name := range []string{"weft", "flannel"} {
		p := filepath.Join(binDir, name)
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o755 {
			t.Errorf("%s: mode %v, want 0755", name, st.Mode().Perm())
		}
		if b, _ := os.ReadFile(p); string(b) != "\x7fELF plugin v1" {
			t.Errorf("%s: content %q", name, b)
		}
	}

	// Reinstalling replaces the files (new inode, so a running plugin keeps
	// its own) and leaves no temporary files behind.
	before, _ := os.Stat(filepath.Join(binDir, "flannel"))
	if err := os.WriteFile(plugin, []byte("\x7fELF plugin v2"), 0o700); err != nil {
		t.Fatal(err)
	}
	custom := []byte(`{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"flannel"}]}`)
	o.Conflist = custom
	if err := Install(o); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(filepath.Join(binDir, "flannel"))
	if os.SameFile(before, after) {
		t.Error("plugin was rewritten in place, not replaced")
	}
	if b, _ := os.ReadFile(filepath.Join(binDir, "flannel")); string(b) != "\x7fELF plugin v2" {
		t.Errorf("after reinstall: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(confDir, "10-flannel.conflist")); !bytes.Equal(b, custom) {
		t.Errorf("custom conflist: %s", b)
	}
	for _, d := range []string{confDir, binDir} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") {
				t.Errorf("temporary file left: %s", filepath.Join(d, e.Name()))
			}
		}
	}
}

func TestInstallRefuses(t *testing.T) {
	dir := t.TempDir()
	err := Install(InstallOptions{ConfDir: dir, ConfName: "x.conflist", Conflist: []byte(`{"name":"x"}`)})
	if err == nil {
		t.Error("installed a conflist without plugins")
	}
	err = Install(InstallOptions{BinDir: dir, Plugin: filepath.Join(dir, "missing")})
	if err == nil {
		t.Error("installed a missing plugin")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("refused installs left %d files", len(ents))
	}
}
