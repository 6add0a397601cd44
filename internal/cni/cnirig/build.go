// Package cnirig runs weft's CNI plugin the way a container runtime does:
// it builds the plugin and the reference plugins it delegates to, makes a
// "node" network namespace with its own subnet.env and data dirs, and adds,
// checks and deletes pods through libcni (or cnitool). The plugin's tests
// use it; it builds on containernetworking/plugins' testutils, so no
// production binary may import it (cmd/weft's import test checks).
package cnirig

import (
	"context"
	"fmt"
	"github.com/weft-net/weft/internal/cni"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Module paths of what Build compiles.
const (
	pluginsModule = "github.com/containernetworking/plugins"
	cniModule     = "github.com/containernetworking/cni"
	weftCNIPkg    = "github.com/weft-net/weft/cmd/weft-cni"
)

// Build compiles into dir: weft-cni as "flannel" (and "weft"), bridge,
// host-local, portmap, loopback and cnitool. The reference plugins and
// cnitool are built from the versions weft's go.mod names, through the
// module proxy (`go install pkg@version`), so weft's go.sum need not list
// their dependencies. It must run inside weft's module (tests do).
func Build(ctx context.Context, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	pv, err := moduleVersion(ctx, pluginsModule)
	if err != nil {
		return err
	}
	cv, err := moduleVersion(ctx, cniModule)
	if err != nil {
		return err
	}
	pkgs := make([]string, 0, len(cni.ReferencePlugins)+1)
	for _, p := range cni.ReferencePlugins {
		pkgs = append(pkgs, pluginsModule+"/"+p+"@"+pv)
	}
	install := exec.CommandContext(ctx, "go", append([]string{"install"}, pkgs...)...)
	install.Env = append(os.Environ(), "GOBIN="+dir)
	if out, err := install.CombinedOutput(); err != nil {
		return fmt.Errorf("build reference CNI plugins: %w\n%s", err, out)
	}
	// cnitool belongs to the cni module, built on its own so that its
	// requirements do not have to agree with the plugins module's.
	tool := exec.CommandContext(ctx, "go", "install", cniModule+"/cnitool@"+cv)
	tool.Env = append(os.Environ(), "GOBIN="+dir)
	if out, err := tool.CombinedOutput(); err != nil {
		return fmt.Errorf("build cnitool: %w\n%s", err, out)
	}
	if err := BuildPlugin(ctx, filepath.Join(dir, "flannel")); err != nil {
		return err
	}
	weft := filepath.Join(dir, "weft")
	os.Remove(weft)
	return os.Link(filepath.Join(dir, "flannel"), weft)
}

// BuildPlugin compiles weft-cni to out.
func BuildPlugin(ctx context.Context, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, weftCNIPkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build weft-cni: %w\n%s", err, b)
	}
	return nil
}

func moduleVersion(ctx context.Context, mod string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Version}}", mod).Output()
	if err != nil {
		return "", fmt.Errorf("version of %s in go.mod: %w", mod, err)
	}
	return strings.TrimSpace(string(out)), nil
}
