// Package cni is the CNI plugin: flannel's meta-plugin, which reads
// subnet.env, renders a config for a delegate (bridge + host-local by
// default), keeps it on disk for DEL and hands the work to the delegate
// (the default one's ADD it does itself, exactly as the binaries would:
// see inProcessBridge). On top of flannel it implements CHECK (the pod's
// interface, address, MTU and routes are verified) and STATUS.
//
// The package must stay light: the plugin binary is exec'd for every pod, so
// nothing here may import client-go or the etcd client.
package cni

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weft-net/weft/internal/readyfile"
	"github.com/weft-net/weft/internal/subnetenv"
)

// Defaults are flannel's.
const (
	DefaultSubnetFile = subnetenv.DefaultPath
	DefaultDataDir    = "/var/lib/cni/flannel"
)

// NetConf is the plugin's own configuration, as found in a flannel conflist.
type NetConf struct {
	types.NetConf

	// IPAM shadows types.NetConf's: flannel lets a top-level ipam object
	// (e.g. a host-local dataDir) through into the delegate's ipam.
	IPAM          map[string]any `json:"ipam,omitempty"`
	SubnetFile    string         `json:"subnetFile"`
	DataDir       string         `json:"dataDir"`
	Delegate      map[string]any `json:"delegate"`
	RuntimeConfig map[string]any `json:"runtimeConfig,omitempty"`

	// ReadyFile (weft's addition) is the agent's readiness marker that
	// STATUS requires; default weftd.ready beside SubnetFile.
	ReadyFile string `json:"readyFile,omitempty"`
	// ExecDelegate (weft's addition) makes ADD exec the bridge plugin even
	// for a delegate the plugin runs in process (see inProcessBridge).
	ExecDelegate bool `json:"execDelegate,omitempty"`
}

// LoadNetConf decodes the plugin's stdin and fills in flannel's defaults.
func LoadNetConf(data []byte) (*NetConf, error) {
	n := &NetConf{SubnetFile: DefaultSubnetFile, DataDir: DefaultDataDir}
	if err := json.Unmarshal(data, n); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure,
			fmt.Sprintf("decoding network config: %v", err), "")
	}
	if n.SubnetFile == "" {
		n.SubnetFile = DefaultSubnetFile
	}
	if n.DataDir == "" {
		n.DataDir = DefaultDataDir
	}
	if n.ReadyFile == "" {
		n.ReadyFile = readyfile.Path(n.SubnetFile)
	}
	return n, nil
}

// checkDelegate refuses what flannel refuses: the delegate's name and ipam
// are the plugin's to set.
func (n *NetConf) checkDelegate() error {
	if t, ok := n.Delegate["type"]; ok {
		if _, isString := t.(string); !isString {
			return types.NewError(types.ErrInvalidNetworkConfig,
				"delegate must have a string \"type\" (e.g. \"bridge\")", "")
		}
	}
	for _, k := range []string{"name", "ipam"} {
		if _, ok := n.Delegate[k]; ok {
			return types.NewError(types.ErrInvalidNetworkConfig,
				fmt.Sprintf("delegate must not set %q: the flannel plugin sets it; remove it from the delegate object", k), "")
		}
	}
	return nil
}

// RenderDelegate builds the delegate's config from the plugin config and the
// node's subnet.env, exactly as flannel does: name, type bridge, ipMasq (the
// bridge masquerades only when the agent does not), mtu, isGateway for a
// bridge, cniVersion, and host-local IPAM over the node's subnet with a route
// to the cluster network. Keys the user set in the delegate win.
func RenderDelegate(n *NetConf, env subnetenv.Env) (map[string]any, error) {
	if err := n.checkDelegate(); err != nil {
		return nil, err
	}
	d := make(map[string]any, len(n.Delegate)+8)
	for k, v := range n.Delegate {
		d[k] = v
	}
	if n.RuntimeConfig != nil {
		d["runtimeConfig"] = n.RuntimeConfig
	}
	d["name"] = n.Name
	if _, ok := d["type"]; !ok {
		d["type"] = "bridge"
	}
	if _, ok := d["ipMasq"]; !ok {
		d["ipMasq"] = !env.IPMasq
	}
	if _, ok := d["mtu"]; !ok {
		d["mtu"] = env.MTU
	}
	if d["type"] == "bridge" {
		if _, ok := d["isGateway"]; !ok {
			d["isGateway"] = true
		}
	}
	if n.CNIVersion != "" {
		d["cniVersion"] = n.CNIVersion
	}
	ipam, err := renderIPAM(n.IPAM, env)
	if err != nil {
		return nil, err
	}
	d["ipam"] = ipam
	return d, nil
}

func renderIPAM(base map[string]any, env subnetenv.Env) (map[string]any, error) {
	ipam := make(map[string]any, len(base)+3)
	for k, v := range base {
		ipam[k] = v
	}
	if _, ok := ipam["type"]; !ok {
		ipam["type"] = "host-local"
	}
	// flannel's range is the subnet's network address (10.244.1.0/24), not
	// the host address subnet.env carries.
	ranges := []any{}
	for _, sn := range []netip.Prefix{env.Subnet, env.IPv6Subnet} {
		if sn.IsValid() {
			ranges = append(ranges, []any{map[string]any{"subnet": sn.Masked().String()}})
		}
	}
	ipam["ranges"] = ranges

	routes := []any{}
	if r, ok := ipam["routes"]; ok && r != nil {
		list, isList := r.([]any)
		if !isList {
			return nil, types.NewError(types.ErrInvalidNetworkConfig,
				"ipam.routes must be a list of {\"dst\": CIDR} objects", "")
		}
		routes = append(routes, list...)
	}
	for _, nw := range []netip.Prefix{env.Network, env.IPv6Network} {
		if nw.IsValid() {
			routes = append(routes, map[string]any{"dst": nw.Masked().String()})
		}
	}
	ipam["routes"] = routes
	return ipam, nil
}

// delegated is the part of a saved delegate config the plugin reads back.
// It is read by exact key, as the runtime and flannel read the type:
// Go's struct decoding would also take a user's "tYpe" or "MTU" key from
// the delegate object, and a config that cannot be read back would wedge
// DEL for good.
type delegated struct {
	Type   string
	MTU    int   // 0 (not checked) when absent or not a whole number
	Routes []any // ipam.routes as saved
}

func parseDelegated(data []byte) (delegated, error) {
	var d delegated
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return d, fmt.Errorf("decoding delegate config: %w", err)
	}
	d.Type, _ = m["type"].(string)
	if d.Type == "" {
		return d, fmt.Errorf("delegate config has no type")
	}
	if mtu, ok := m["mtu"].(float64); ok && mtu == float64(int(mtu)) {
		d.MTU = int(mtu)
	}
	if ipam, ok := m["ipam"].(map[string]any); ok {
		d.Routes, _ = ipam["routes"].([]any)
	}
	return d, nil
}

// routeDsts are the IPAM routes the pod must have (the cluster networks,
// plus any the user added).
func (d delegated) routeDsts() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, r := range d.Routes {
		dst, _ := r.(map[string]any)["dst"].(string)
		p, err := netip.ParsePrefix(dst)
		if err != nil {
			return nil, fmt.Errorf("delegate ipam route %v: %w", r, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
