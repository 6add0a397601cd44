package image

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// Deb is one Debian package as apt's lists name it: the version apt would
// install, and the pool file with its checksum.
type Deb struct {
	Package  string
	Version  string
	Arch     string
	Filename string // pool/main/i/iptables/iptables_1.8.9-2_amd64.deb
	SHA256   string
}

// File is the name the package is cached under: the pool file's base name,
// which holds name, version and architecture.
func (d Deb) File() string { return path.Base(d.Filename) }

// Closure returns the packages pkgs need to run, pkgs included, sorted:
// apt's recursive Depends and Pre-Depends of the candidate versions.
// Recommends and Suggests are left out, as `apt-get install
// --no-install-recommends` does. Virtual packages (apt prints them in angle
// brackets) stand for the real ones apt lists beside them.
func Closure(ctx context.Context, pkgs []string) ([]string, error) {
	args := append([]string{"depends", "--recurse", "--no-recommends", "--no-suggests",
		"--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"}, pkgs...)
	out, err := run(ctx, "", "apt-cache", args...)
	if err != nil {
		return nil, fmt.Errorf("dependencies of %v: %w", pkgs, err)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		// Package names start a line; their dependencies are indented.
		if line == "" || line[0] == ' ' || line[0] == '<' {
			continue
		}
		seen[strings.TrimSpace(line)] = true
	}
	for _, p := range pkgs {
		if !seen[p] {
			return nil, fmt.Errorf("dependencies of %v: apt does not know %s (run apt-get update)", pkgs, p)
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	slices.Sort(names)
	return names, nil
}

// Candidates looks up the version of each package apt would install.
func Candidates(ctx context.Context, names []string) ([]Deb, error) {
	out, err := run(ctx, "", "apt-cache", append([]string{"show", "--no-all-versions"}, names...)...)
	if err != nil {
		return nil, fmt.Errorf("package records of %v: %w", names, err)
	}
	debs, err := parseRecords(out)
	if err != nil {
		return nil, fmt.Errorf("package records of %v: %w", names, err)
	}
	byName := map[string]Deb{}
	for _, d := range debs {
		byName[d.Package] = d
	}
	res := make([]Deb, 0, len(names))
	for _, n := range names {
		// apt-cache show takes "name:arch" but prints only the name.
		d, ok := byName[strings.SplitN(n, ":", 2)[0]]
		if !ok {
			return nil, fmt.Errorf("apt-cache show printed no record for %s", n)
		}
		res = append(res, d)
	}
	return res, nil
}

// parseRecords reads deb822 stanzas as apt-cache show prints them.
func parseRecords(out []byte) ([]Deb, error) {
	var debs []Deb
	var cur Deb
	flush := func() error {
		if cur == (Deb{}) {
			return nil
		}
		if cur.Package == "" || cur.Version == "" || cur.Filename == "" || cur.SHA256 == "" {
			return fmt.Errorf("incomplete record %+v", cur)
		}
		debs = append(debs, cur)
		cur = Deb{}
		return nil
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 4<<20) // Description lines can be long
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		k, v, ok := strings.Cut(line, ": ")
		if !ok || line[0] == ' ' {
			continue
		}
		switch k {
		case "Package":
			cur.Package = v
		case "Version":
			cur.Version = v
		case "Architecture":
			cur.Arch = v
		case "Filename":
			cur.Filename = v
		case "SHA256":
			cur.SHA256 = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return debs, nil
}

// Fetch makes sure dir holds each deb, checked against apt's SHA256, and
// returns their paths in the order of debs. Only the missing ones are
// downloaded, with one `apt-get download`.
func Fetch(ctx context.Context, debs []Deb, dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("deb cache: %w", err)
	}
	paths := make([]string, len(debs))
	var missing []Deb
	for i, d := range debs {
		paths[i] = filepath.Join(dir, d.File())
		if sum, err := fileSHA256(paths[i]); err == nil && sum == d.SHA256 {
			continue
		}
		missing = append(missing, d)
	}
	if len(missing) == 0 {
		return paths, nil
	}
	tmp, err := os.MkdirTemp(dir, ".download-")
	if err != nil {
		return nil, fmt.Errorf("deb cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	// apt drops root and downloads as _apt, which must be able to write here.
	if err := os.Chmod(tmp, 0o777); err != nil {
		return nil, fmt.Errorf("deb cache: %w", err)
	}
	args := []string{"download"}
	for _, d := range missing {
		args = append(args, d.Package+"="+d.Version)
	}
	if _, err := run(ctx, tmp, "apt-get", args...); err != nil {
		return nil, fmt.Errorf("download %d packages: %w", len(missing), err)
	}
	// apt-get names files name_version_arch.deb with the epoch's colon
	// escaped; match them to the records by checksum instead.
	got, err := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if err != nil {
		return nil, err
	}
	bySum := map[string]string{}
	for _, f := range got {
		sum, err := fileSHA256(f)
		if err != nil {
			return nil, fmt.Errorf("downloaded %s: %w", f, err)
		}
		bySum[sum] = f
	}
	for _, d := range missing {
		f, ok := bySum[d.SHA256]
		if !ok {
			return nil, fmt.Errorf("download %s %s: no file with SHA256 %s (apt's lists may be stale: apt-get update)", d.Package, d.Version, d.SHA256)
		}
		if err := os.Rename(f, filepath.Join(dir, d.File())); err != nil {
			return nil, fmt.Errorf("deb cache: %w", err)
		}
	}
	return paths, nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// run runs a command and returns its stdout; a failure carries stderr.
func run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}
