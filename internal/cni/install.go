package cni

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/weft-net/weft/internal/atomicfile"
)

// FlannelConflist is the conflist flannel installs, byte for byte.
const FlannelConflist = `{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}`

// Install defaults, as flannel's DaemonSet uses them.
const (
	DefaultConfDir  = "/etc/cni/net.d"
	DefaultConfName = "10-flannel.conflist"
	DefaultBinDir   = "/opt/cni/bin"
)

// PluginNames are the names the plugin binary is installed under: its own,
// and flannel's so that `"type":"flannel"` finds it.
var PluginNames = []string{"weft", "flannel"}

// InstallOptions says what to install where.
type InstallOptions struct {
	ConfDir  string // CNI config dir; "" skips the conflist
	ConfName string // file name in ConfDir
	Conflist []byte // nil: FlannelConflist
	BinDir   string // CNI bin dir; "" skips the binaries
	Plugin   string // path of the weft-cni binary to copy
}

// Install writes the conflist and copies the plugin into the bin dir under
// each of PluginNames. Every file is replaced atomically (temp file in the
// same dir, fsync, rename), so a runtime never sees half a config or exec's
// half a binary, and a running plugin keeps its old inode.
func Install(o InstallOptions) error {
	if o.BinDir != "" {
		if err := installPlugin(o.Plugin, o.BinDir); err != nil {
			return err
		}
	}
	if o.ConfDir != "" {
		conf := o.Conflist
		if conf == nil {
			conf = []byte(FlannelConflist)
		}
		// A runtime that cannot parse the file ignores it silently; refuse
		// to install one.
		var probe struct {
			Name    string            `json:"name"`
			Plugins []json.RawMessage `json:"plugins"`
		}
		if err := json.Unmarshal(conf, &probe); err != nil || probe.Name == "" || len(probe.Plugins) == 0 {
			return fmt.Errorf("conflist is not a CNI network list (need name and plugins): %v", err)
		}
		name := o.ConfName
		if name == "" {
			name = DefaultConfName
		}
		if err := os.MkdirAll(o.ConfDir, 0o755); err != nil {
			return fmt.Errorf("install conflist: %w", err)
		}
		if err := atomicfile.Write(filepath.Join(o.ConfDir, name), conf, 0o644); err != nil {
			return fmt.Errorf("install conflist: %w", err)
		}
	}
	return nil
}

func installPlugin(src, binDir string) error {
	if src == "" {
		return fmt.Errorf("install plugin: no plugin binary given")
	}
	data, err := readExecutable(src)
	if err != nil {
		return fmt.Errorf("install plugin: %w", err)
	}
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return fmt.Errorf("install plugin: %w", err)
	}
	for _, name := range PluginNames {
		if err := atomicfile.Write(filepath.Join(binDir, name), data, 0o755); err != nil {
			return fmt.Errorf("install plugin: %w", err)
		}
	}
	return nil
}

func readExecutable(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	return io.ReadAll(f)
}
