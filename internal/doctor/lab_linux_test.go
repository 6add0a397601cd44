package doctor_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/doctor"
	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lab/labtest"
)

func TestMain(m *testing.M) { os.Exit(labtest.Main(m)) }

type jsonReport struct {
	OK      bool
	Results []struct {
		Check, Status, Message, Hint string
		Details                      []string
	}
}

// runDoctor runs `weft doctor --json` inside the node's namespace with
// args and returns the report and whether it exited 0.
func runDoctor(t *testing.T, ctx context.Context, bin, ns string, args []string) (jsonReport, bool) {
	t.Helper()
	argv := append([]string{"netns", "exec", ns, filepath.Join(bin, "weft"), "doctor", "--json"}, args...)
	var r jsonReport
	ok := runJSON(t, exec.CommandContext(ctx, "ip", argv...), &r)
	return r, ok
}

// runJSON runs cmd, decodes what it prints into v and reports whether it
// exited 0; a command that does not run or prints no JSON fails t.
func runJSON(t *testing.T, cmd *exec.Cmd, v any) bool {
	t.Helper()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%s: %v\n%s", cmd, err, stderr.String())
	}
	if jerr := json.Unmarshal(out, v); jerr != nil {
		t.Fatalf("%s: %v, output: %v\n%s\n%s", cmd, err, jerr, out, stderr.String())
	}
	return err == nil
}

// wantHealthy fails t unless doctor exited 0 (ok) with every check ok.
func wantHealthy(t *testing.T, what string, r jsonReport, ok bool) {
	t.Helper()
	if !ok || !r.OK {
		t.Fatalf("%s: doctor failed:\n%s", what, r)
	}
	for _, x := range r.Results {
		if x.Status != "ok" {
			t.Errorf("%s: %s is %s: %s", what, x.Check, x.Status, x.Message)
		}
	}
}

// verdict is what a check must say: its status, and text in its message
// or details.
type verdict struct{ status, text string }

// wantVerdicts fails t unless each check of r that want names has its
// verdict.
func wantVerdicts(t *testing.T, what string, r jsonReport, want map[string]verdict) {
	t.Helper()
	for _, x := range r.Results {
		w, checked := want[x.Check]
		if !checked {
			continue
		}
		text := strings.Join(append([]string{x.Message}, x.Details...), "\n")
		if x.Status != w.status || !strings.Contains(text, w.text) {
			t.Errorf("%s: %s is %s (%s), want %s with %q", what, x.Check, x.Status, text, w.status, w.text)
		}
	}
	if t.Failed() {
		t.Logf("report:\n%s", r)
	}
}

func (r jsonReport) String() string {
	var b strings.Builder
	for _, x := range r.Results {
		fmt.Fprintf(&b, "%-5s %-13s %s | %s\n", x.Status, x.Check, x.Message, x.Hint)
		for _, d := range x.Details {
			fmt.Fprintf(&b, "                    %s\n", d)
		}
	}
	return b.String()
}

// upLab brings up a lab named prefix-<6 hex> under the test's temporary
// directory with the test binaries, and takes it down when the test ends.
func upLab(t *testing.T, ctx context.Context, prefix string, o lab.Options) *lab.Lab {
	t.Helper()
	var suffix [3]byte
	_, _ = rand.Read(suffix[:])
	o.Name, o.Root = prefix+"-"+hex.EncodeToString(suffix[:]), t.TempDir()
	o.BinDir, o.CNIBinDir = labtest.Binaries(t)
	l, err := lab.Up(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		defer dcancel()
		if err := l.Down(dctx, lab.DownOptions{}); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	return l
}

// TestLab brings up a two-node vxlan lab and runs weft doctor inside a
// node: all ok; then, with the agent stopped and a route deleted by hand,
// doctor names the missing route and exits non-zero.
func TestLab(t *testing.T) {
	labtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	l := upLab(t, ctx, "doctest", lab.Options{
		Nodes: 2, PodsPerNode: 1, Backend: config.BackendVXLAN,
	})
	n1, n2 := l.Node(1), l.Node(2)
	pid, err := l.AgentPID(1)
	if err != nil {
		t.Fatal(err)
	}
	// The agent's flags, for when it is gone.
	args, err := doctor.AgentArgs(pid)
	if err != nil {
		t.Fatal(err)
	}

	// Doctor with no flags reads the running agent's, as `weft lab doctor`
	// runs it.
	start := time.Now()
	r, ok := runDoctor(t, ctx, l.BinDir, n1.NS, nil)
	t.Logf("doctor on a healthy node took %s", time.Since(start).Round(time.Millisecond))
	wantHealthy(t, "healthy lab", r, ok)
	if x := result(r, "agent"); !strings.Contains(x.Message, fmt.Sprintf("settings from weftd pid %d's command line", pid)) {
		t.Errorf("agent check does not say whose settings doctor used: %s", x.Message)
	}
	if t.Failed() {
		t.Fatalf("report:\n%s", r)
	}

	// Break the node: stop its agent (nothing repairs the kernel now) and
	// delete the route to node 2's subnet.
	if err := l.StopAgent(ctx, 1); err != nil {
		t.Fatal(err)
	}
	remote := n2.Subnet.Masked()
	mustExec(t, ctx, l, n1.NS, "ip", "route", "del", remote.String())
	r, ok = runDoctor(t, ctx, l.BinDir, n1.NS, args)
	if ok || r.OK {
		t.Fatalf("broken node: doctor exited 0:\n%s", r)
	}
	wantVerdicts(t, "broken node", r, map[string]verdict{
		"routes":     {"fail", "missing: " + remote.String() + " via " + remote.Addr().String() + " dev flannel.1 onlink"},
		"agent":      {"fail", "no weftd process in this network namespace"},
		"readyz":     {"fail", "connection refused"},
		"store":      {"ok", ""},
		"device":     {"ok", ""},
		"leases":     {"ok", ""},
		"masquerade": {"ok", ""},
	})
}
