package cni

import (
	"encoding/json"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
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
// made it, with the runtime's CNI_ARGS cniArgs) is a bridge with host-local
// IPAM that the plugin runs in process, and its bridge options.
func inProcessBridge(d map[string]any, cniArgs string) (bridgeConf, bool) {
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
	// host-local reads resolv.conf-style DNS in its own main, not in the
	// allocator the plugin uses.
	if _, ok := ipam["resolvConf"]; ok {
		return c, false
	}
	// Routes by destination, gateway, metric and table; a scope is the
	// bridge's to set.
	routes, _ := ipam["routes"].([]any)
	for _, r := range routes {
		m, _ := r.(map[string]any)
		if _, ok := m["scope"]; ok {
			return c, false
		}
	}
	// The bridge takes a pod MAC from runtimeConfig or CNI_ARGS.
	if rc, ok := d["runtimeConfig"].(map[string]any); ok {
		if _, ok := rc["mac"]; ok {
			return c, false
		}
	}
	for _, kv := range strings.Split(cniArgs, ";") {
		if k, _, _ := strings.Cut(kv, "="); strings.EqualFold(k, "MAC") {
			return c, false
		}
	}
	// Decoded as the bridge plugin decodes it; a value of the wrong type
	// gets the bridge plugin's own error.
	b, err := json.Marshal(d)
	if err != nil || json.Unmarshal(b, &c) != nil {
		return c, false
	}
	if c.Bridge == "" {
		c.Bridge = defaultBridgeName
	}
	if c.IsDefaultGateway {
		c.IsGateway = true
	}
	return c, true
}
