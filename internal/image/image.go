// Package image builds weft's container image, the one deploy/kube/weft.yml
// runs: a root file system unpacked from Debian packages (iptables,
// nftables and the libraries they need), weft's static binaries in
// /opt/bin, written as an OCI image archive. `make image` runs it through
// hack/mkimage; no weft binary links it.
//
// The packages come from this machine's apt (the versions it would
// install), so the image needs no registry but Debian's. Both layers are
// cached by content: a second build with the same packages and binaries
// only writes the archive again.
package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/weft-net/weft/internal/atomicfile"
)

// DefaultPackages are what weftd and the init containers exec: nft for
// EnableNFTables, iptables (with ip6tables) for masquerading otherwise.
var DefaultPackages = []string{"iptables", "nftables"}

// Paths in the image. BinDir is flannel's, so that flanneld's command
// lines keep working with flanneld as a link to weftd.
const (
	BinDir     = "/opt/bin"
	Entrypoint = BinDir + "/weftd"
	Path       = "PATH=" + BinDir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// Annotation keys of the archive's index entry: the OCI tag, and the full
// name containerd's `ctr images import` gives the image.
const (
	AnnotationRefName       = "org.opencontainers.image.ref.name"
	AnnotationContainerName = "io.containerd.image.name"
	LabelVersion            = "org.opencontainers.image.version"
)

// layerFormat changes when a layer's content changes for the same inputs,
// so that older cached layers are not reused.
const layerFormat = "weft-image-layer-2"

// Options says what to build.
type Options struct {
	Ref      string   // image reference with a tag, e.g. ghcr.io/weft-net/weft:v0.1.0
	Version  string   // weft's version, recorded as the image's version label
	BinDir   string   // holds static weftd, weft and weft-cni
	Packages []string // Debian packages of the root file system; nil: DefaultPackages
	CacheDir string   // debs and layers
	Out      string   // the OCI archive to write
	Created  time.Time
	Log      *slog.Logger
}

// Result describes what Build wrote.
type Result struct {
	Digest   string // the image manifest's digest
	Debs     []Deb
	Rootfs   Layer
	Binaries Layer
}

// Layer is one cached layer.
type Layer struct {
	Path   string
	Cached bool // reused from an earlier build
}

// Build builds the image and writes it to o.Out as an OCI archive (a tar of
// an OCI image layout) with one image, tagged with o.Ref's tag.
func Build(ctx context.Context, o Options) (Result, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ref, err := name.NewTag(o.Ref, name.StrictValidation)
	if err != nil {
		return Result{}, fmt.Errorf("image reference %q: %w", o.Ref, err)
	}
	pkgs := o.Packages
	if pkgs == nil {
		pkgs = DefaultPackages
	}
	if o.CacheDir == "" || o.Out == "" || o.BinDir == "" {
		return Result{}, fmt.Errorf("image: bin dir, cache dir and output are required")
	}
	created := o.Created.UTC()
	var res Result

	names, err := Closure(ctx, pkgs)
	if err != nil {
		return res, err
	}
	if res.Debs, err = Candidates(ctx, names); err != nil {
		return res, err
	}
	goarch, err := goArch(res.Debs)
	if err != nil {
		return res, err
	}
	debPaths, err := Fetch(ctx, res.Debs, filepath.Join(o.CacheDir, "debs"))
	if err != nil {
		return res, err
	}
	log.Info("root file system", "packages", len(res.Debs))

	layers := filepath.Join(o.CacheDir, "layers")
	rootKey := sha256.New()
	fmt.Fprintln(rootKey, layerFormat)
	for _, d := range res.Debs {
		fmt.Fprintln(rootKey, d.Package, d.Version, d.Arch, d.SHA256)
	}
	res.Rootfs, err = cachedLayer(layers, "rootfs", rootKey, func(w io.Writer) error {
		return writeRootfs(ctx, debPaths, w)
	})
	if err != nil {
		return res, fmt.Errorf("root file system layer: %w", err)
	}

	bins := binaries(o.BinDir)
	binKey := sha256.New()
	fmt.Fprintln(binKey, layerFormat, goarch, created.Unix())
	for _, b := range bins {
		sum, err := fileSHA256(b.Src)
		if err != nil {
			return res, fmt.Errorf("binary %s: %w", b.Path, err)
		}
		fmt.Fprintln(binKey, b.Path, sum, b.Links, b.Syms)
	}
	res.Binaries, err = cachedLayer(layers, "bin", binKey, func(w io.Writer) error {
		return writeBinaries(bins, goarch, created, w)
	})
	if err != nil {
		return res, fmt.Errorf("binaries layer: %w", err)
	}
	log.Info("layers", "rootfs", res.Rootfs.Path, "rootfs_cached", res.Rootfs.Cached,
		"binaries", res.Binaries.Path, "binaries_cached", res.Binaries.Cached)

	img, err := assemble(ref, o.Version, goarch, created, res)
	if err != nil {
		return res, err
	}
	digest, err := img.Digest()
	if err != nil {
		return res, fmt.Errorf("image digest: %w", err)
	}
	res.Digest = digest.String()
	if err := writeArchive(img, ref, o.CacheDir, o.Out, created); err != nil {
		return res, err
	}
	log.Info("image", "ref", ref.Name(), "digest", res.Digest, "archive", o.Out)
	return res, nil
}

// binaries are weft's executables and the names flannel's images give the
// same programs: the CNI plugin is also `flannel`, the agent `flanneld`.
func binaries(dir string) []Binary {
	return []Binary{
		{Path: "opt/bin/weftd", Src: filepath.Join(dir, "weftd"), Syms: []string{"opt/bin/flanneld"}},
		{Path: "opt/bin/weft", Src: filepath.Join(dir, "weft")},
		{Path: "opt/bin/weft-cni", Src: filepath.Join(dir, "weft-cni"), Links: []string{"opt/bin/flannel"}},
	}
}

var debArch = map[string]string{
	"amd64": "amd64", "arm64": "arm64", "armhf": "arm", "i386": "386",
	"ppc64el": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
}

// goArch is the image's architecture: that of the packages apt picked,
// which must be the one this tool runs on (the binaries are built for it).
func goArch(debs []Deb) (string, error) {
	for _, d := range debs {
		if d.Arch == "all" {
			continue
		}
		a, ok := debArch[d.Arch]
		if !ok || a != runtime.GOARCH {
			return "", fmt.Errorf("package %s is for %s, this machine is %s", d.Package, d.Arch, runtime.GOARCH)
		}
	}
	return runtime.GOARCH, nil
}

// cachedLayer returns the gzip'd layer <dir>/<kind>-<key>.tar.gz, writing it
// with write if it is not there yet. Layers of the same kind with other
// keys are removed: only the newest build's are worth keeping.
func cachedLayer(dir, kind string, key hash.Hash, write func(io.Writer) error) (Layer, error) {
	p := filepath.Join(dir, kind+"-"+hex.EncodeToString(key.Sum(nil))[:32]+".tar.gz")
	if _, err := os.Stat(p); err == nil {
		return Layer{Path: p, Cached: true}, nil
	}
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.DefaultCompression)
	if err != nil {
		return Layer{}, err
	}
	if err := write(zw); err != nil {
		return Layer{}, err
	}
	if err := zw.Close(); err != nil {
		return Layer{}, err
	}
	if err := atomicfile.Write(p, buf.Bytes(), 0o644); err != nil {
		return Layer{}, err
	}
	old, _ := filepath.Glob(filepath.Join(dir, kind+"-*.tar.gz"))
	for _, f := range old {
		if f != p {
			_ = os.Remove(f)
		}
	}
	return Layer{Path: p}, nil
}

func assemble(ref name.Tag, version, goarch string, created time.Time, res Result) (v1.Image, error) {
	cfg := &v1.ConfigFile{
		Architecture: goarch,
		OS:           "linux",
		Created:      v1.Time{Time: created},
		RootFS:       v1.RootFS{Type: "layers"},
		Config: v1.Config{
			Entrypoint: []string{Entrypoint},
			Env:        []string{Path},
			WorkingDir: "/",
			Labels: map[string]string{
				LabelVersion:                     version,
				"org.opencontainers.image.title": "weft",
				"org.opencontainers.image.description": "weft node agent (weftd), CLI (weft) and CNI plugin (weft-cni, also installed as flannel), " +
					"with iptables and nftables from Debian",
				"org.opencontainers.image.source": "https://github.com/weft-net/weft",
			},
		},
	}
	if goarch == "arm" {
		cfg.Variant = "v7" // Debian's armhf
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	base, err := mutate.ConfigFile(base, cfg)
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	var adds []mutate.Addendum
	for _, l := range []struct {
		path, what string
	}{
		{res.Rootfs.Path, fmt.Sprintf("debian packages: %s", debList(res.Debs))},
		{res.Binaries.Path, "weft binaries in " + BinDir},
	} {
		layer, err := tarball.LayerFromFile(l.path, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", l.path, err)
		}
		adds = append(adds, mutate.Addendum{Layer: layer, MediaType: types.OCILayer,
			History: v1.History{Created: v1.Time{Time: created}, CreatedBy: "weft hack/mkimage: " + l.what}})
	}
	img, err := mutate.Append(base, adds...)
	if err != nil {
		return nil, fmt.Errorf("image layers: %w", err)
	}
	return img, nil
}

func debList(debs []Deb) string {
	s := make([]string, len(debs))
	for i, d := range debs {
		s[i] = d.Package + "=" + d.Version
	}
	return strings.Join(s, " ")
}

// writeArchive writes img as an OCI image layout and tars it into out,
// replacing out atomically.
func writeArchive(img v1.Image, ref name.Tag, cacheDir, out string, mtime time.Time) error {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return err
	}
	dir, err := os.MkdirTemp(cacheDir, ".layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, mutate.IndexMediaType(empty.Index, types.OCIImageIndex))
	if err != nil {
		return fmt.Errorf("image layout: %w", err)
	}
	err = p.AppendImage(img, layout.WithAnnotations(map[string]string{
		AnnotationRefName:       ref.TagStr(),
		AnnotationContainerName: ref.Name(),
	}))
	if err != nil {
		return fmt.Errorf("image layout: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: rel + "/", Mode: 0o755, ModTime: mtime})
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: 0o644, Size: int64(len(data)), ModTime: mtime}); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		return fmt.Errorf("archive %s: %w", out, err)
	}
	return atomicfile.Write(out, buf.Bytes(), 0o644)
}
