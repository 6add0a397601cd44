package lab

import (
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/weft-net/weft/internal/subnetenv"
)

// podNetworkName is the CNI network name, flannel's.
const podNetworkName = "cbr0"

// podConflist renders the CNI network configuration list a container runtime
// on node n would use. This is the one place the lab decides how pods are
// wired.
//
// It is flannel's own conflist ("type":"flannel" delegating to bridge with
// hairpin mode and a default gateway, then portmap), run by weft's plugin
// (bin/cni/flannel), which reads subnet.env at ADD time. All lab nodes share
// one filesystem, so each names its own subnet.env, the plugin's data dir
// and (through flannel's top-level ipam, passed on to host-local) its own
// address allocations. env is checked here so that a node without a subnet
// fails before any pod is made.
//
// portmap, the one addition, is told its backend (portmapBackend, as it
// would detect it): without one it runs iptables twice on every ADD and DEL
// to probe for it, half of its time and a fifth of a pod's ADD.
func podConflist(env subnetenv.Env, n *Node, portmapBackend string) ([]byte, error) {
	if !env.Subnet.IsValid() && !env.IPv6Subnet.IsValid() {
		return nil, fmt.Errorf("node %d: subnet.env has no subnet", n.Index)
	}
	portmap := map[string]any{
		"type":         "portmap",
		"capabilities": map[string]bool{"portMappings": true},
	}
	if portmapBackend != "" {
		portmap["backend"] = portmapBackend
	}
	plugins := []any{
		map[string]any{
			"type":       "flannel",
			"subnetFile": n.SubnetFile,
			"dataDir":    filepath.Join(n.CNIDataDir, "flannel"),
			"ipam":       map[string]any{"dataDir": n.CNIDataDir},
			"delegate":   map[string]any{"hairpinMode": true, "isDefaultGateway": true},
		},
		portmap,
	}
	return json.Marshal(map[string]any{
		"cniVersion": "0.3.1",
		"name":       podNetworkName,
		"plugins":    plugins,
	})
}

// loopbackConflist brings up lo in the pod, as runtimes do.
func loopbackConflist() []byte {
	return []byte(`{"cniVersion":"1.0.0","name":"lo","plugins":[{"type":"loopback"}]}`)
}
