package kube

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestImage builds the image with `make image` (into a temp dir), checks
// the archive with skopeo, unpacks it with skopeo and tar, and runs in it,
// chrooted, what the DaemonSet runs: weftd, nft, iptables, and the init
// containers' install-cni with weft.yml's arguments and ConfigMap.
func TestImage(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: building the image takes a minute")
	}
	for _, tool := range []string{"make", "apt-cache", "apt-get", "dpkg-deb", "tar", "skopeo"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (a Debian machine after `make deps` has it): %v", tool, err)
		}
	}
	m := loadManifest(t)
	ref := makeVar(t, "print-image")
	tag := ref[strings.LastIndex(ref, ":")+1:]
	tmp := t.TempDir()
	archive := filepath.Join(tmp, "weft-image.oci.tar")

	// The same target a user runs, with the outputs moved; deps already ran
	// (make test runs it first).
	start := time.Now()
	cmd := exec.Command("make", "--no-print-directory", "-C", repoRoot(t), "-o", "deps", "image",
		"IMAGE_BIN="+filepath.Join(tmp, "bin"), "IMAGE_OUT="+archive)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	t.Logf("make image: %v", time.Since(start).Round(time.Millisecond))

	var info struct {
		Architecture, Os string
		Labels           map[string]string
		Layers           []string
	}
	skopeoJSON(t, &info, "inspect", "oci-archive:"+archive+":"+tag)
	if info.Os != "linux" || info.Architecture == "" || len(info.Layers) != 2 {
		t.Errorf("skopeo inspect: %+v, want linux, an architecture and two layers", info)
	}
	version := info.Labels["org.opencontainers.image.version"]
	if version == "" {
		t.Errorf("no version label: %v", info.Labels)
	}
	var cfg struct {
		Config struct {
			Entrypoint []string
			Env        []string
		}
	}
	skopeoJSON(t, &cfg, "inspect", "--config", "oci-archive:"+archive+":"+tag)
	if !slices.Equal(cfg.Config.Entrypoint, m.DaemonSet.Spec.Template.Spec.Containers[0].Command) {
		t.Errorf("entrypoint %v, want the DaemonSet's weftd command", cfg.Config.Entrypoint)
	}
	if name := indexAnnotation(t, archive, "io.containerd.image.name"); name != ref {
		t.Errorf("index names the image %q, want %q (what ctr images import tags it as)", name, ref)
	}

	if os.Getuid() != 0 {
		t.Skip("unpacking with owners and chroot need root; the archive itself checked out")
	}
	// skopeo copy checks every blob against its digest.
	dir := filepath.Join(tmp, "dir")
	if out, err := exec.Command("skopeo", "copy", "-q", "oci-archive:"+archive+":"+tag, "dir:"+dir).CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}
	var man struct{ Layers []struct{ Digest string } }
	readJSON(t, filepath.Join(dir, "manifest.json"), &man)
	root := filepath.Join(tmp, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, l := range man.Layers {
		blob := filepath.Join(dir, strings.TrimPrefix(l.Digest, "sha256:"))
		if out, err := exec.Command("tar", "-xzf", blob, "-C", root, "--numeric-owner").CombinedOutput(); err != nil {
			t.Fatalf("unpack layer %s: %v\n%s", l.Digest, err, out)
		}
	}

	chroot := func(env []string, args ...string) string {
		t.Helper()
		cmd := exec.Command("chroot", append([]string{root}, args...)...)
		cmd.Env = append([]string{"PATH=/opt/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("in the image: %v: %v\n%s%s", args, err, out, stderr.Bytes())
		}
		return strings.TrimSpace(string(out) + stderr.String())
	}
	if got := chroot(nil, "/opt/bin/weftd", "--version"); !strings.Contains(got, version) {
		t.Errorf("weftd --version = %q, want the image's version %q", got, version)
	}
	if got := chroot(nil, "/opt/bin/flanneld", "--version"); !strings.Contains(got, version) {
		t.Errorf("flanneld (weftd) --version = %q, want %q", got, version)
	}
	if got := chroot(nil, "nft", "--version"); !strings.HasPrefix(got, "nftables v") {
		t.Errorf("nft --version = %q", got)
	}
	for _, ipt := range []string{"iptables", "ip6tables", "iptables-save", "iptables-restore"} {
		if got := chroot(nil, ipt, "--version"); !strings.Contains(got, "(nf_tables)") {
			t.Errorf("%s --version = %q, want Debian's default, the nf_tables variant", ipt, got)
		}
	}
	if got := chroot(nil, "iptables-legacy", "--version"); !strings.Contains(got, "(legacy)") {
		t.Errorf("iptables-legacy --version = %q", got)
	}

	// The init containers, with the ConfigMap where the pod mounts it.
	pod := m.DaemonSet.Spec.Template.Spec
	for _, c := range pod.InitContainers {
		for _, vm := range c.VolumeMounts {
			for _, v := range pod.Volumes {
				if v.Name != vm.Name || v.ConfigMap == nil {
					continue
				}
				for k, data := range m.Config.Data {
					p := filepath.Join(root, vm.MountPath, k)
					if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		chroot(nil, append(slices.Clone(c.Command), c.Args...)...)
	}
	conf, err := os.ReadFile(filepath.Join(root, "etc/cni/net.d/10-flannel.conflist"))
	if err != nil || string(conf) != m.Config.Data["cni-conf.json"] {
		t.Errorf("installed conflist = %q (%v), want the ConfigMap's cni-conf.json", conf, err)
	}
	plugin, err := os.ReadFile(filepath.Join(root, "opt/bin/weft-cni"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"flannel", "weft"} {
		got, err := os.ReadFile(filepath.Join(root, "opt/cni/bin", name))
		if err != nil || !bytes.Equal(got, plugin) {
			t.Errorf("/opt/cni/bin/%s is not weft-cni (%v)", name, err)
		}
	}
	var ver struct {
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal([]byte(chroot([]string{"CNI_COMMAND=VERSION"}, "/opt/cni/bin/flannel")), &ver); err != nil ||
		!slices.Contains(ver.SupportedVersions, "0.3.1") {
		t.Errorf("CNI VERSION of the installed flannel plugin: %+v (%v), want 0.3.1 among them", ver, err)
	}
}

func skopeoJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out, err := exec.Command("skopeo", args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("skopeo %v: %v\n%s", args, err, ee.Stderr)
		}
		t.Fatalf("skopeo %v: %v", args, err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("skopeo %v: %v\n%s", args, err, out)
	}
}

func readJSON(t *testing.T, p string, v any) {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
}

// indexAnnotation reads an annotation of the one image in the archive's
// index.json.
func indexAnnotation(t *testing.T, archive, key string) string {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			t.Fatal("no index.json in the archive")
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Name != "index.json" {
			continue
		}
		var idx struct {
			Manifests []struct{ Annotations map[string]string }
		}
		if err := json.NewDecoder(tr).Decode(&idx); err != nil {
			t.Fatal(err)
		}
		if len(idx.Manifests) != 1 {
			t.Fatalf("index lists %d manifests, want 1", len(idx.Manifests))
		}
		return idx.Manifests[0].Annotations[key]
	}
}
