package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/clitest"
)

var weftBin = clitest.Command(".", "weft")

func TestMain(m *testing.M) { os.Exit(clitest.Main(m, weftBin)) }

// commandPaths walks the tree: every group and every command, as the words
// after "weft" ({} is weft itself).
func commandPaths(g *group, prefix []string) (groups, leaves [][]string) {
	groups = append(groups, prefix)
	for _, c := range g.cmds {
		p := append(append([]string{}, prefix...), c.name)
		if c.group != nil {
			gs, ls := commandPaths(c.group, p)
			groups, leaves = append(groups, gs...), append(leaves, ls...)
		} else {
			leaves = append(leaves, p)
		}
	}
	return groups, leaves
}

func with(p []string, args ...string) []string { return append(append([]string{}, p...), args...) }

// Every command and group of weft as a person meets it, as nobody: --help,
// -h and `weft help <path>` print the same usage to stdout and exit 0; an
// unknown flag or command, or a missing one, is one line on stderr and
// exit 2, before anything is done.
func TestCommandLine(t *testing.T) {
	bin := weftBin.Path(t)
	groups, leaves := commandPaths(weft(), nil)
	if len(leaves) < 11 {
		t.Fatalf("only %d commands in the tree: %v", len(leaves), leaves)
	}
	for _, p := range append(groups, leaves...) {
		name := strings.Join(with([]string{"weft"}, p...), " ")
		usage := "Usage: " + name
		help := clitest.Run(t, bin, with(p, "--help")...)
		clitest.CheckHelp(t, with(p, "--help"), help, usage)
		// One style: the command, then <command> for a group, then what
		// it takes in brackets.
		if first, _, _ := strings.Cut(help.Stdout, "\n"); first != usage && first != usage+" <command> [flags]" && !strings.HasPrefix(first, usage+" [") {
			t.Errorf("%s --help: first line %q, want %q and its synopsis", name, first, usage)
		}
		if h := clitest.Run(t, bin, with(p, "-h")...); h != help {
			t.Errorf("%s -h: %s; want what --help gave", name, h)
		}
		if h := clitest.Run(t, bin, with([]string{"help"}, p...)...); h != help {
			t.Errorf("weft help %s: %s; want what --help gave", strings.Join(p, " "), h)
		}
	}
	for _, p := range leaves {
		name := strings.Join(with([]string{"weft"}, p...), " ")
		r := clitest.Run(t, bin, with(p, "--no-such-flag")...)
		clitest.CheckUsageError(t, with(p, "--no-such-flag"), r, name+": ", "no-such-flag", "(see "+name+" --help)")
	}
	for _, p := range groups {
		name := strings.Join(with([]string{"weft"}, p...), " ")
		r := clitest.Run(t, bin, with(p, "upp")...)
		clitest.CheckUsageError(t, with(p, "upp"), r, name+`: unknown command "upp" (see `+name+" --help)")
		r = clitest.Run(t, bin, p...)
		clitest.CheckUsageError(t, p, r, name+": missing command", "(see "+name+" --help)")
		r = clitest.Run(t, bin, with(p, "--no-such-flag")...)
		clitest.CheckUsageError(t, with(p, "--no-such-flag"), r, name+": ", "no-such-flag")
	}
	for _, args := range [][]string{
		{"help", "upp"}, {"help", "lab", "upp"}, {"help", "etcd", "extra"},
		{"etcd", "extra"}, {"version", "extra"}, {"lab", "status", "extra"}, {"lab", "doctor", "1", "2"},
	} {
		clitest.CheckUsageError(t, args, clitest.Run(t, bin, args...), "weft ", "(see weft ")
	}
	// The lab says it needs root only once it is asked to do something.
	if os.Geteuid() == 0 {
		r := clitest.Run(t, bin, "lab", "up")
		if r.Code != 1 || !strings.Contains(r.Stderr, "weft lab up: the lab creates network namespaces and needs root") {
			t.Errorf("weft lab up as nobody: %s", r)
		}
	}
}

func TestVersion(t *testing.T) {
	bin := weftBin.Path(t)
	for _, args := range [][]string{{"version"}, {"--version"}} {
		clitest.CheckVersion(t, args, clitest.Run(t, bin, args...))
	}
}

// `make build` links in git describe's version, so that no binary it makes
// calls itself "(devel)".
func TestMakeBuildLinksVersion(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("needs make")
	}
	want, err := exec.Command("git", "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		t.Skipf("not in a git checkout: %v", err)
	}
	out, err := exec.Command("make", "-n", "-C", "../..", "build").CombinedOutput()
	if err != nil {
		t.Fatalf("make -n build: %v\n%s", err, out)
	}
	builds := 0
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "go build") && strings.Contains(line, "./cmd/") {
			builds++
			if !strings.Contains(line, "-X main.version="+strings.TrimSpace(string(want))) {
				t.Errorf("make build links no version: %s", line)
			}
		}
	}
	if builds == 0 {
		t.Errorf("make -n build runs no go build of ./cmd/...:\n%s", out)
	}
}
