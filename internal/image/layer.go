package image

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"strings"
	"time"
)

// skipped are the parts of the packages that nothing in the image reads:
// documentation and translations, as Debian's slim images leave them out.
var skipped = []string{
	"usr/share/doc/", "usr/share/man/", "usr/share/info/", "usr/share/lintian/",
	"usr/share/locale/", "usr/share/bug/",
}

// alternatives are the links Debian's iptables postinst makes with
// update-alternatives, at its default choice (the nft variants, priority
// 20 over legacy's 10): maintainer scripts do not run when packages are only
// unpacked.
var alternatives = [][2]string{
	{"usr/sbin/iptables", "iptables-nft"},
	{"usr/sbin/iptables-save", "iptables-nft-save"},
	{"usr/sbin/iptables-restore", "iptables-nft-restore"},
	{"usr/sbin/ip6tables", "ip6tables-nft"},
	{"usr/sbin/ip6tables-save", "ip6tables-nft-save"},
	{"usr/sbin/ip6tables-restore", "ip6tables-nft-restore"},
}

// layerWriter writes one layer: a tar stream with each path once, parent
// directories before their contents.
type layerWriter struct {
	tw   *tar.Writer
	seen map[string]byte // path -> tar type flag
}

func newLayerWriter(w io.Writer) *layerWriter {
	return &layerWriter{tw: tar.NewWriter(w), seen: map[string]byte{}}
}

// add writes hdr (and body for regular files). A directory that is already
// there is skipped: packages share /usr, /usr/lib and the like. Any other
// path given twice is a conflict, as it would be for dpkg.
func (l *layerWriter) add(hdr *tar.Header, body io.Reader) error {
	name := strings.TrimSuffix(hdr.Name, "/")
	if t, ok := l.seen[name]; ok {
		if t == tar.TypeDir && hdr.Typeflag == tar.TypeDir {
			return nil
		}
		return fmt.Errorf("%s is in the layer twice", name)
	}
	if dir := path.Dir(name); dir != "." {
		if t, ok := l.seen[dir]; !ok || t != tar.TypeDir {
			if err := l.add(dirHeader(dir, 0o755, hdr.ModTime), nil); err != nil {
				return err
			}
		}
	}
	l.seen[name] = hdr.Typeflag
	if err := l.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("layer entry %s: %w", name, err)
	}
	if body != nil && hdr.Typeflag == tar.TypeReg {
		if _, err := io.Copy(l.tw, body); err != nil {
			return fmt.Errorf("layer entry %s: %w", name, err)
		}
	}
	return nil
}

func (l *layerWriter) has(name string) bool {
	_, ok := l.seen[name]
	return ok
}

func (l *layerWriter) close() error { return l.tw.Close() }

func dirHeader(name string, mode int64, mtime time.Time) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: mtime, Uname: "root", Gname: "root"}
}

// cleanName turns a deb's "./usr/sbin/x" (or directory "./usr/sbin/") into
// the layer's "usr/sbin/x" ("usr/sbin"); "" is the root itself.
func cleanName(n string) string {
	n = path.Clean("/" + n)
	return strings.TrimPrefix(n, "/")
}

// writeRootfs writes the layer of the unpacked packages: every deb's data
// (as `dpkg-deb -x` would unpack it, owners and modes kept), minus the
// skipped paths, then the iptables alternatives links and the directories
// a container runtime expects.
func writeRootfs(ctx context.Context, debs []string, w io.Writer) error {
	l := newLayerWriter(w)
	var newest time.Time
	for _, deb := range debs {
		t, err := copyDeb(ctx, deb, l)
		if err != nil {
			return err
		}
		if t.After(newest) {
			newest = t
		}
	}
	for _, a := range alternatives {
		if !l.has(path.Join(path.Dir(a[0]), a[1])) || l.has(a[0]) {
			continue
		}
		err := l.add(&tar.Header{Typeflag: tar.TypeSymlink, Name: a[0], Linkname: a[1], Mode: 0o777,
			ModTime: newest, Uname: "root", Gname: "root"}, nil)
		if err != nil {
			return err
		}
	}
	for _, d := range []struct {
		name string
		mode int64
	}{{"etc", 0o755}, {"run", 0o755}, {"tmp", 0o1777}, {"var/tmp", 0o1777}} {
		if !l.has(d.name) {
			if err := l.add(dirHeader(d.name, d.mode, newest), nil); err != nil {
				return err
			}
		}
	}
	return l.close()
}

// copyDeb copies one package's file system tree into l and returns its
// newest modification time.
func copyDeb(ctx context.Context, deb string, l *layerWriter) (time.Time, error) {
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return time.Time{}, err
	}
	if err := cmd.Start(); err != nil {
		return time.Time{}, fmt.Errorf("dpkg-deb %s: %w", deb, err)
	}
	newest, copyErr := copyTree(out, l)
	// Drain what is left so that dpkg-deb is not killed by a closed pipe
	// when an error stopped the copy early.
	_, _ = io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return time.Time{}, fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w: %s", deb, err, strings.TrimSpace(stderr.String()))
	}
	if copyErr != nil {
		return time.Time{}, fmt.Errorf("unpack %s: %w", deb, copyErr)
	}
	return newest, nil
}

func copyTree(r io.Reader, l *layerWriter) (time.Time, error) {
	var newest time.Time
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return newest, nil
		}
		if err != nil {
			return newest, err
		}
		name := cleanName(hdr.Name)
		if name == "" || isSkipped(name) {
			continue
		}
		out := &tar.Header{
			Typeflag: hdr.Typeflag,
			Name:     name,
			Linkname: hdr.Linkname,
			Size:     hdr.Size,
			Mode:     hdr.Mode,
			Uid:      hdr.Uid,
			Gid:      hdr.Gid,
			Uname:    hdr.Uname,
			Gname:    hdr.Gname,
			ModTime:  hdr.ModTime,
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			out.Name += "/"
			out.Size = 0
		case tar.TypeLink:
			// A hard link names another entry of the archive.
			out.Linkname = cleanName(hdr.Linkname)
			out.Size = 0
		case tar.TypeSymlink:
			out.Size = 0
		case tar.TypeReg:
		default:
			return newest, fmt.Errorf("%s: unexpected tar entry type %q", name, hdr.Typeflag)
		}
		if hdr.ModTime.After(newest) {
			newest = hdr.ModTime
		}
		if err := l.add(out, tr); err != nil {
			return newest, err
		}
	}
}

func isSkipped(name string) bool {
	for _, p := range skipped {
		if strings.HasPrefix(name+"/", p) {
			return true
		}
	}
	return false
}

// Binary is a file of the binaries layer.
type Binary struct {
	Path  string   // in the image, e.g. opt/bin/weftd
	Src   string   // on this machine
	Links []string // more paths in the image for the same file (hard links)
	Syms  []string // symbolic links to Path, in Path's directory
}

// writeBinaries writes the layer that holds weft's binaries, each checked
// to be a static executable for goarch.
func writeBinaries(bins []Binary, goarch string, mtime time.Time, w io.Writer) error {
	l := newLayerWriter(w)
	for _, b := range bins {
		data, err := os.ReadFile(b.Src)
		if err != nil {
			return fmt.Errorf("binary %s: %w", b.Path, err)
		}
		if err := checkStatic(data, goarch); err != nil {
			return fmt.Errorf("binary %s (%s): %w", b.Path, b.Src, err)
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: b.Path, Size: int64(len(data)), Mode: 0o755,
			ModTime: mtime, Uname: "root", Gname: "root"}
		if err := l.add(hdr, bytes.NewReader(data)); err != nil {
			return err
		}
		for _, ln := range b.Links {
			err := l.add(&tar.Header{Typeflag: tar.TypeLink, Name: ln, Linkname: b.Path, Mode: 0o755,
				ModTime: mtime, Uname: "root", Gname: "root"}, nil)
			if err != nil {
				return err
			}
		}
		for _, s := range b.Syms {
			err := l.add(&tar.Header{Typeflag: tar.TypeSymlink, Name: s, Linkname: path.Base(b.Path), Mode: 0o777,
				ModTime: mtime, Uname: "root", Gname: "root"}, nil)
			if err != nil {
				return err
			}
		}
	}
	return l.close()
}

var elfMachine = map[string]elf.Machine{
	"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64, "arm": elf.EM_ARM, "386": elf.EM_386,
	"ppc64le": elf.EM_PPC64, "s390x": elf.EM_S390, "riscv64": elf.EM_RISCV,
}

// checkStatic refuses what would not run in the image: another
// architecture's binary, or one that needs a dynamic loader (built with
// cgo).
func checkStatic(data []byte, goarch string) error {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	if want, ok := elfMachine[goarch]; !ok || f.Machine != want {
		return fmt.Errorf("built for %v, the image is %s", f.Machine, goarch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("dynamically linked: build it with CGO_ENABLED=0")
		}
	}
	return nil
}
