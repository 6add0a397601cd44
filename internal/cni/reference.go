package cni

import "path"

// ReferencePlugins are the plugins a flannel node has besides flannel's
// own, as package paths within github.com/containernetworking/plugins:
// the delegate (bridge), its IPAM (host-local), and the rest of flannel's
// conflist (portmap, and loopback for the pod's lo). The Makefile's
// CNI_PLUGINS builds the same list (a test holds them together).
var ReferencePlugins = []string{
	"plugins/main/bridge",
	"plugins/ipam/host-local",
	"plugins/meta/portmap",
	"plugins/main/loopback",
}

// ReferencePluginNames are the binaries' names: bridge, host-local, ...
func ReferencePluginNames() []string {
	out := make([]string, len(ReferencePlugins))
	for i, p := range ReferencePlugins {
		out[i] = path.Base(p)
	}
	return out
}
