// Package clitest runs weft's commands as a person at a shell would: a
// binary built into a directory any user can read, run as an unprivileged
// user (nobody) when the test itself runs as root, so that --help and
// friends are shown to work without root.
package clitest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Nobody is the uid and gid commands run as when the test runs as root.
const Nobody = 65534

// Version is what Command links in as main.version, shaped as the
// Makefile's git describe output.
const Version = "v0.0.0-7-gc0ffee1-test"

// Command is the command of package pkg, as go build takes it, built as
// name with Version linked in.
func Command(pkg, name string) *Binary {
	return &Binary{Pkg: pkg, Name: name, LDFlags: "-X main.version=" + Version}
}

// Main runs the tests, then removes what bins built; call it from
// TestMain: os.Exit(clitest.Main(m, bin)).
func Main(m *testing.M, bins ...*Binary) int {
	code := m.Run()
	for _, b := range bins {
		b.Remove()
	}
	return code
}

// Binary is one command, built once per test binary on first use.
type Binary struct {
	Pkg     string // package to build, as go build takes it: ".", "../weftd"
	Name    string // file name of the binary
	LDFlags string // go build -ldflags, e.g. "-X main.version=v0.0.0-test"

	once sync.Once
	dir  string
	err  error
}

// Path builds the binary if it is not built yet and returns its path.
func (b *Binary) Path(t testing.TB) string {
	t.Helper()
	b.once.Do(func() {
		if b.dir, b.err = os.MkdirTemp("", "weft-clitest-"); b.err != nil {
			return
		}
		// MkdirTemp makes 0700: let the unprivileged user in.
		if b.err = os.Chmod(b.dir, 0o755); b.err != nil {
			return
		}
		args := []string{"build", "-o", filepath.Join(b.dir, b.Name)}
		if b.LDFlags != "" {
			args = append(args, "-ldflags", b.LDFlags)
		}
		out, err := exec.Command("go", append(args, b.Pkg)...).CombinedOutput()
		if err != nil {
			b.err = fmt.Errorf("go build %s: %w\n%s", b.Pkg, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return filepath.Join(b.dir, b.Name)
}

// Remove deletes what Path built; call it from TestMain after m.Run.
func (b *Binary) Remove() {
	if b.dir != "" {
		os.RemoveAll(b.dir)
	}
}

// Result is how a command ended.
type Result struct {
	Stdout, Stderr string
	Code           int // exit status
}

func (r Result) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
}

// Run runs bin with args as nobody (when the test is root), with only PATH
// set in the environment, from /, and waits up to a minute for it.
func Run(t testing.TB, bin string, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Dir = "/"
	if os.Geteuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: Nobody, Gid: Nobody}}
	}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%s %q: %v", bin, args, err)
	}
	return r
}

// CheckHelp fails t unless r is usage printed on request: exit 0, stdout
// starting with usage, stderr empty.
func CheckHelp(t testing.TB, args []string, r Result, usage string) {
	t.Helper()
	if r.Code != 0 || r.Stderr != "" || !strings.HasPrefix(r.Stdout, usage) {
		t.Errorf("%q: %s; want exit 0, stdout starting %q, empty stderr", args, r, usage)
	}
}

// CheckVersion fails t unless r is Version printed on request: exit 0,
// Version and a newline on stdout, stderr empty.
func CheckVersion(t testing.TB, args []string, r Result) {
	t.Helper()
	if r.Code != 0 || r.Stdout != Version+"\n" || r.Stderr != "" {
		t.Errorf("%q: %s; want exit 0 and %q on stdout", args, r, Version)
	}
}

// CheckUsageError fails t unless r is a command line refused: exit 2,
// nothing on stdout, one line on stderr starting with prefix and holding
// every string of want.
func CheckUsageError(t testing.TB, args []string, r Result, prefix string, want ...string) {
	t.Helper()
	ok := r.Code == 2 && r.Stdout == "" && strings.HasPrefix(r.Stderr, prefix) &&
		strings.Count(r.Stderr, "\n") == 1 && strings.HasSuffix(r.Stderr, "\n")
	for _, w := range want {
		ok = ok && strings.Contains(r.Stderr, w)
	}
	if !ok {
		t.Errorf("%q: %s; want exit 2, empty stdout, one line on stderr starting %q with %q", args, r, prefix, want)
	}
}
