package kubecp

import (
	"fmt"
	"os"
	"path/filepath"
)

// BinDirEnv names the variable that points at the binaries (`make test`
// sets it to what `make kube-bins` built).
const BinDirEnv = "WEFT_KUBE_BIN_DIR"

// KubeVersion is the Kubernetes release whose binaries kubecp runs: the one
// of the client-go in go.mod (v0.X.Y -> v1.X.Y), which scripts/kube-bins.sh
// builds. A test holds the two together. (A test binary carries no module
// versions in its build information, so it cannot be read from there.)
const KubeVersion = "v1.37.2"

// DefaultBinDir is where the binaries are: $WEFT_KUBE_BIN_DIR when set,
// else scripts/kube-bins.sh's cache, $WEFT_CACHE/kube/<KubeVersion> or
// ${XDG_CACHE_HOME:-~/.cache}/weft/kube/<KubeVersion>. It does not check that
// they are there; CheckBinaries does.
func DefaultBinDir() (string, error) {
	if d := os.Getenv(BinDirEnv); d != "" {
		return d, nil
	}
	cache := os.Getenv("WEFT_CACHE")
	if cache == "" {
		user, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("kubernetes binaries: %w", err)
		}
		cache = filepath.Join(user, "weft")
	}
	return filepath.Join(cache, "kube", KubeVersion), nil
}
