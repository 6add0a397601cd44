package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/weft-net/weft/internal/cni"
)

// runInstallCNI installs the CNI plugin (as weft and flannel) and flannel's
// conflist, as flannel's DaemonSet init containers do; each file is replaced
// atomically, so it is safe to run on a live node.
func runInstallCNI(_ context.Context, args []string) error {
	fs := newFlags("weft install-cni", "[flags]", `Installs weft's CNI plugin into the CNI bin dir as weft and flannel, and
flannel's conflist (or --conflist) into the CNI config dir, as flannel's
DaemonSet init containers do. Each file is replaced atomically.`)
	confDir := fs.String("cni-conf-dir", cni.DefaultConfDir, "CNI config dir (empty: do not install the conflist)")
	confName := fs.String("cni-conf-name", cni.DefaultConfName, "conflist file name")
	confSrc := fs.String("conflist", "", "install this conflist file instead of flannel's (e.g. a mounted ConfigMap)")
	binDir := fs.String("cni-bin-dir", cni.DefaultBinDir, "CNI bin dir (empty: do not install the plugin)")
	plugin := fs.String("plugin", "", "weft-cni binary to install (default: weft-cni beside this executable)")
	if err := fs.parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fs.usageErr(fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	o := cni.InstallOptions{ConfDir: *confDir, ConfName: *confName, BinDir: *binDir, Plugin: *plugin}
	if o.BinDir != "" && o.Plugin == "" {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("finding weft-cni: %w (pass --plugin)", err)
		}
		o.Plugin = filepath.Join(filepath.Dir(self), "weft-cni")
	}
	if *confSrc != "" {
		data, err := os.ReadFile(*confSrc)
		if err != nil {
			return fmt.Errorf("--conflist: %w", err)
		}
		o.Conflist = data
	}
	if err := cni.Install(o); err != nil {
		return err
	}
	if o.BinDir != "" {
		fmt.Fprintf(os.Stderr, "installed %s as %v in %s\n", o.Plugin, cni.PluginNames, o.BinDir)
	}
	if o.ConfDir != "" {
		fmt.Fprintf(os.Stderr, "installed %s\n", filepath.Join(o.ConfDir, o.ConfName))
	}
	return nil
}
