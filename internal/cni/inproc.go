package cni

import (
	"encoding/json"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/allocator"
)

// bridgeConf is a bridge delegate config the plugin runs itself instead of
// exec'ing the bridge plugin, which would exec host-local in turn: two
// process starts of a pod's four, half of an ADD's time, and most of it
// when pods start ten at once on two cores. The kernel state and the
// host-local files it leaves are the bridge plugin's own (same veth
// naming, sysctls, addresses, routes and allocation files), so the
// bridge plugin DELs and CHECKs such a pod, and a node can switch between
// the two at any time.
type bridgeConf struct {
	Bridge           string    `json:"bridge"`
	MTU              int       `json:"mtu"`
	IsGateway        bool      `json:"isGateway"`
	IsDefaultGateway bool      `json:"isDefaultGateway"`
	HairpinMode      bool      `json:"hairpinMode"`
	DNS              types.DNS `json:"dns"`

	ipam *allocator.IPAMConfig // host-local's, as it reads the config
}

// defaultBridgeName is the bridge plugin's.
const defaultBridgeName = "cni0"

// inProcessKeys are the bridge options the in-process delegate implements,
// each as the bridge plugin does; inProcessOff are the ones it implements
// only at their zero value. A config with any other key (vlan, macspoofchk,
// a MAC, ...) goes to the bridge binary: nothing is ever half done here.
var (
	inProcessKeys = map[string]bool{
		"type": true, "name": true, "cniVersion": true, "bridge": true, "mtu": true,
		"isGateway": true, "isDefaultGateway": true, "hairpinMode": true, "dns": true,
		"ipam": true, "runtimeConfig": true, "capabilities": true,
		"ipMasq": true, "promiscMode": true, "forceAddress": true,
	}
	inProcessOff = []string{"ipMasq", "promiscMode", "forceAddress"}
)

// inProcessBridge reports whether the delegate config d (as RenderDelegate
// made it; conf is d encoded, as the delegate reads it; cniArgs the
// runtime's CNI_ARGS) is a bridge with host-local IPAM that the plugin runs
// in process, and its bridge and IPAM options.
func inProcessBridge(d map[string]any, conf []byte, cniArgs string) (bridgeConf, bool) {
	var c bridgeConf
	if d["type"] != "bridge" {
		return c, false
	}
	for k := range d {
		if !inProcessKeys[k] {
			return c, false
		}
	}
	for _, k := range inProcessOff {
		if v, ok := d[k]; ok && v != false {
			return c, false
		}
	}
	ipam, _ := d["ipam"].(map[string]any)
	if ipam["type"] != "host-local" {
		return c, false
	}
	// From here on, the config as the plugins decode it (Go's decoding:
	// any case of a key), and a value of the wrong type gets the bridge
	// plugin's own error.
	if json.Unmarshal(conf, &c) != nil {
		return c, false
	}
	ipamConf, _, err := allocator.LoadIPAMConfig(conf, cniArgs)
	if err != nil {
		return c, false
	}
	// host-local reads resolv.conf-style DNS in its own main, not in the
	// allocator the plugin uses; a route's scope is applied by nothing
	// here.
	if ipamConf.ResolvConf != "" {
		return c, false
	}
	for _, r := range ipamConf.Routes {
		if r.Scope != nil {
			return c, false
		}
	}
	// The bridge takes a pod MAC from runtimeConfig or CNI_ARGS, and
	// refuses CNI_ARGS it does not know unless told to ignore them.
	var rc struct {
		RuntimeConfig struct {
			Mac string `json:"mac"`
		} `json:"runtimeConfig"`
	}
	if json.Unmarshal(conf, &rc) != nil || rc.RuntimeConfig.Mac != "" {
		return c, false
	}
	var env struct {
		types.CommonArgs
		MAC types.UnmarshallableString `json:"mac,omitempty"`
	}
	if cniArgs != "" && (types.LoadArgs(cniArgs, &env) != nil || env.MAC != "") {
		return c, false
	}
	if c.Bridge == "" {
		c.Bridge = defaultBridgeName
	}
	if c.IsDefaultGateway {
		c.IsGateway = true
	}
	c.ipam = ipamConf
	return c, true
}
