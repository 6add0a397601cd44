package image

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"hash"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestParseRecords(t *testing.T) {
	// apt-cache show output, trimmed: two stanzas, a multi-line field, an
	// epoch in the version.
	out := []byte(`Package: libgmp10
Version: 2:6.2.1+dfsg1-1.1
Architecture: amd64
Depends: libc6 (>= 2.14)
Description: Multiprecision arithmetic library
 GNU MP is a programmer's library: Version: not a field
Filename: pool/main/g/gmp/libgmp10_6.2.1+dfsg1-1.1_amd64.deb
SHA256: 187aa0a7e5a2f3e2b3c9b7e0c4bfe8b1c6a5e1e3e2f4d3c2b1a0f9e8d7c6b5a4

Package: netbase
Version: 6.4
Architecture: all
Filename: pool/main/n/netbase/netbase_6.4_all.deb
SHA256: 29b23c48c0fe6f878e56c5ddc9f65d7c05d729360f22cd1a5c3b3f1bbca30c2b
`)
	debs, err := parseRecords(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []Deb{
		{"libgmp10", "2:6.2.1+dfsg1-1.1", "amd64", "pool/main/g/gmp/libgmp10_6.2.1+dfsg1-1.1_amd64.deb", "187aa0a7e5a2f3e2b3c9b7e0c4bfe8b1c6a5e1e3e2f4d3c2b1a0f9e8d7c6b5a4"},
		{"netbase", "6.4", "all", "pool/main/n/netbase/netbase_6.4_all.deb", "29b23c48c0fe6f878e56c5ddc9f65d7c05d729360f22cd1a5c3b3f1bbca30c2b"},
	}
	if len(debs) != len(want) || debs[0] != want[0] || debs[1] != want[1] {
		t.Errorf("got %+v\nwant %+v", debs, want)
	}
	if debs[0].File() != "libgmp10_6.2.1+dfsg1-1.1_amd64.deb" {
		t.Errorf("File() = %s", debs[0].File())
	}
	if _, err := parseRecords([]byte("Package: x\nVersion: 1\n")); err == nil {
		t.Error("a record without Filename and SHA256 was accepted")
	}
}

// buildDeb makes a real .deb with dpkg-deb from files (path -> content;
// a content starting with "->" is a symlink).
func buildDeb(t *testing.T, name string, files map[string]string) string {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb is not installed (not a Debian machine)")
	}
	dir := filepath.Join(t.TempDir(), name)
	ctl := "Package: " + name + "\nVersion: 1.0\nArchitecture: all\nMaintainer: weft tests <weft@example.invalid>\nDescription: test\n"
	files["DEBIAN/control"] = ctl
	for p, c := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(c, "->"); ok {
			if err := os.Symlink(target, full); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(full, []byte(c), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	deb := dir + ".deb"
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "--build", dir, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build: %v\n%s", err, out)
	}
	return deb
}

type entry struct {
	typ      byte
	mode     int64
	linkname string
	body     string
}

func readLayer(t *testing.T, data []byte) (map[string]entry, []string) {
	t.Helper()
	got := map[string]entry{}
	var order []string
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return got, order
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		if _, dup := got[hdr.Name]; dup {
			t.Errorf("%s twice in the layer", hdr.Name)
		}
		got[hdr.Name] = entry{hdr.Typeflag, hdr.Mode, hdr.Linkname, string(body)}
		order = append(order, hdr.Name)
	}
}

func TestWriteRootfs(t *testing.T) {
	a := buildDeb(t, "weft-test-a", map[string]string{
		"usr/sbin/xtables-nft-multi":          "#!multi\n",
		"usr/sbin/iptables-nft":               "->xtables-nft-multi",
		"usr/share/doc/weft-test-a/copyright": "text",
		"usr/share/man/man8/x.8.gz":           "man",
	})
	b := buildDeb(t, "weft-test-b", map[string]string{
		"usr/lib/libb.so.1": "elf",
		"etc/b.conf":        "conf",
	})
	var buf bytes.Buffer
	if err := writeRootfs(context.Background(), []string{a, b}, &buf); err != nil {
		t.Fatal(err)
	}
	got, order := readLayer(t, buf.Bytes())
	want := map[string]entry{
		"usr/sbin/xtables-nft-multi": {tar.TypeReg, 0o755, "", "#!multi\n"},
		"usr/sbin/iptables-nft":      {tar.TypeSymlink, 0o777, "xtables-nft-multi", ""},
		// The alternative whose target is there; the others are not made.
		"usr/sbin/iptables": {tar.TypeSymlink, 0o777, "iptables-nft", ""},
		"usr/lib/libb.so.1": {tar.TypeReg, 0o755, "", "elf"},
		"etc/b.conf":        {tar.TypeReg, 0o755, "", "conf"},
		"tmp/":              {tar.TypeDir, 0o1777, "", ""},
		"var/tmp/":          {tar.TypeDir, 0o1777, "", ""},
		"run/":              {tar.TypeDir, 0o755, "", ""},
	}
	for name, w := range want {
		if g, ok := got[name]; !ok || g != w {
			t.Errorf("%s = %+v (present %v), want %+v", name, g, ok, w)
		}
	}
	for name := range got {
		if (strings.HasPrefix(name, "usr/share/") && name != "usr/share/") || strings.Contains(name, "//") ||
			strings.HasPrefix(name, "./") || strings.HasPrefix(name, "/") {
			t.Errorf("unexpected entry %s", name)
		}
	}
	if _, ok := got["usr/sbin/ip6tables"]; ok {
		t.Error("ip6tables link made without its target")
	}
	// Every entry's parent comes before it.
	seen := map[string]bool{}
	for _, n := range order {
		if p := filepath.Dir(strings.TrimSuffix(n, "/")); p != "." && !seen[p+"/"] {
			t.Errorf("%s comes before its directory %s/", n, p)
		}
		seen[n] = true
	}

	// The same file from two packages is a conflict, as for dpkg.
	c := buildDeb(t, "weft-test-c", map[string]string{"etc/b.conf": "other"})
	if err := writeRootfs(context.Background(), []string{b, c}, io.Discard); err == nil || !strings.Contains(err.Error(), "etc/b.conf") {
		t.Errorf("conflicting packages: err = %v", err)
	}
}

func TestCheckStatic(t *testing.T) {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		t.Skip("no go command to build a test binary with")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\n\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	static := filepath.Join(dir, "static")
	cmd := exec.Command(goBin, "build", "-o", static, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH, "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	data, err := os.ReadFile(static)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkStatic(data, runtime.GOARCH); err != nil {
		t.Errorf("static binary refused: %v", err)
	}
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	if err := checkStatic(data, other); err == nil {
		t.Errorf("a %s binary was accepted for %s", runtime.GOARCH, other)
	}
	if err := checkStatic([]byte("#!/bin/sh\n"), runtime.GOARCH); err == nil {
		t.Error("a shell script was accepted")
	}
	// A program of the machine's own, linked against libc.
	sh, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Skip("no /bin/sh to test a dynamic binary with")
	}
	if err := checkStatic(sh, runtime.GOARCH); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("dynamic /bin/sh: err = %v", err)
	}
}

func TestWriteBinaries(t *testing.T) {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"weftd", "weft", "weft-cni"} {
		cmd := exec.Command(goBin, "build", "-o", filepath.Join(dir, n), filepath.Join(dir, "main.go"))
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
	}
	var buf bytes.Buffer
	mtime := time.Unix(1700000000, 0)
	if err := writeBinaries(binaries(dir), runtime.GOARCH, mtime, &buf); err != nil {
		t.Fatal(err)
	}
	got, _ := readLayer(t, buf.Bytes())
	for name, w := range map[string]entry{
		"opt/":             {typ: tar.TypeDir, mode: 0o755},
		"opt/bin/":         {typ: tar.TypeDir, mode: 0o755},
		"opt/bin/flanneld": {typ: tar.TypeSymlink, mode: 0o777, linkname: "weftd"},
		"opt/bin/flannel":  {typ: tar.TypeLink, mode: 0o755, linkname: "opt/bin/weft-cni"},
	} {
		if g := got[name]; g != w {
			t.Errorf("%s = %+v, want %+v", name, g, w)
		}
	}
	for _, n := range []string{"weftd", "weft", "weft-cni"} {
		if g := got["opt/bin/"+n]; g.typ != tar.TypeReg || g.mode != 0o755 || len(g.body) == 0 {
			t.Errorf("opt/bin/%s = type %c mode %o, %d bytes", n, g.typ, g.mode, len(g.body))
		}
	}
	// Same input, same bytes: the layer's digest depends on content only.
	var again bytes.Buffer
	if err := writeBinaries(binaries(dir), runtime.GOARCH, mtime, &again); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("two layers from the same binaries differ")
	}
}

func TestCachedLayer(t *testing.T) {
	dir := t.TempDir()
	key := func(s string) hash.Hash { h := sha256.New(); io.WriteString(h, s); return h }
	writes := 0
	write := func(w io.Writer) error { writes++; _, err := io.WriteString(w, "layer"); return err }
	l1, err := cachedLayer(dir, "bin", key("a"), write)
	if err != nil || l1.Cached {
		t.Fatalf("first: %+v, %v", l1, err)
	}
	l2, err := cachedLayer(dir, "bin", key("a"), write)
	if err != nil || !l2.Cached || l2.Path != l1.Path || writes != 1 {
		t.Fatalf("second, same key: %+v, %v, %d writes", l2, err, writes)
	}
	l3, err := cachedLayer(dir, "bin", key("b"), write)
	if err != nil || l3.Cached || writes != 2 {
		t.Fatalf("other key: %+v, %v", l3, err)
	}
	if _, err := os.Stat(l1.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the older layer %s is still cached: %v", l1.Path, err)
	}
	// A failed write leaves nothing to be reused.
	if _, err := cachedLayer(dir, "bin", key("c"), func(io.Writer) error { return errors.New("boom") }); err == nil {
		t.Fatal("the failed write's error was lost")
	}
	if l, err := cachedLayer(dir, "bin", key("c"), write); err != nil || l.Cached {
		t.Errorf("after a failed write: %+v, %v", l, err)
	}
}
