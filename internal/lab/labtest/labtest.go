// Package labtest is what root tests that bring up labs share: the root
// check and the binaries a lab runs (weft, weftd, and the CNI plugins with
// weft-cni as "flannel").
package labtest

import (
	"fmt"
	weftcni "github.com/weft-net/weft/internal/cni"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// RequireRoot skips t, saying why, unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces; run as root or via `make test`")
	}
}

// build is the one build per test binary, shared by its tests.
var build struct {
	once sync.Once
	dir  string
	err  error
}

// Binaries returns the directory holding weft and weftd, and the one
// holding the CNI plugins: $WEFT_BIN_DIR (set by `make test`) and its cni/,
// or else a fresh build shared by the package's tests and removed by Main.
func Binaries(t testing.TB) (bin, cni string) {
	t.Helper()
	if d := os.Getenv("WEFT_BIN_DIR"); d != "" {
		return d, filepath.Join(d, "cni")
	}
	build.once.Do(func() {
		build.dir, build.err = os.MkdirTemp("", "weft-test-bin-")
		if build.err == nil {
			build.err = buildInto(build.dir)
		}
	})
	if build.err != nil {
		t.Fatalf("building binaries: %v", build.err)
	}
	return build.dir, filepath.Join(build.dir, "cni")
}

// Main runs the tests and removes what Binaries built; call it from
// TestMain: os.Exit(labtest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	return code
}

func buildInto(dir string) error {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return err
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	cni := filepath.Join(dir, "cni")
	run := func(env []string, args ...string) error {
		cmd := exec.Command("go", args...)
		cmd.Dir, cmd.Env = root, append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run(nil, "build", "-o", dir+"/", "./cmd/weft", "./cmd/weftd"); err != nil {
		return err
	}
	// The reference plugins at the version go.mod requires.
	ver, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "github.com/containernetworking/plugins").Output()
	if err != nil {
		return fmt.Errorf("CNI plugins version: %w", err)
	}
	args := []string{"install"}
	for _, p := range weftcni.ReferencePlugins {
		args = append(args, "github.com/containernetworking/plugins/"+p+"@"+strings.TrimSpace(string(ver)))
	}
	if err := run([]string{"GOBIN=" + cni}, args...); err != nil {
		return err
	}
	// weft's CNI plugin, under the name flannel's conflist uses.
	return run(nil, "build", "-o", filepath.Join(cni, "flannel"), "./cmd/weft-cni")
}
