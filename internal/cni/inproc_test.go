package cni

import (
	"encoding/json"
	"reflect"
	"testing"
)

// Only what the in-process delegate does exactly as the bridge plugin stays
// in process; everything else goes to the bridge binary.
func TestInProcessBridge(t *testing.T) {
	// flannel's default delegate, as RenderDelegate makes it.
	const base = `{"type":"bridge","name":"cbr0","cniVersion":"0.3.1","hairpinMode":true,"isDefaultGateway":true,
		"isGateway":true,"ipMasq":false,"mtu":1450,"runtimeConfig":{"portMappings":[]},
		"ipam":{"type":"host-local","dataDir":"/d","ranges":[[{"subnet":"10.244.7.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}]}}`
	conf := func(edit func(d map[string]any)) map[string]any {
		var d map[string]any
		if err := json.Unmarshal([]byte(base), &d); err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			edit(d)
		}
		return d
	}
	decide := func(d map[string]any, cniArgs string) (bridgeConf, bool) {
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		return inProcessBridge(d, b, cniArgs)
	}
	c, ok := decide(conf(nil), "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web")
	if !ok || c.ipam == nil || c.ipam.Name != "cbr0" || c.ipam.DataDir != "/d" || len(c.ipam.Ranges) != 1 || len(c.ipam.Routes) != 1 {
		t.Fatalf("flannel's delegate: %+v (ipam %+v), %v; want it in process", c, c.ipam, ok)
	}
	if c.ipam = nil; !reflect.DeepEqual(c, bridgeConf{Bridge: "cni0", MTU: 1450, IsGateway: true, IsDefaultGateway: true, HairpinMode: true}) {
		t.Fatalf("flannel's delegate: %+v; want it in process", c)
	}
	ipam := func(d map[string]any) map[string]any { return d["ipam"].(map[string]any) }
	for name, tc := range map[string]struct {
		edit func(d map[string]any)
		args string
		want bool
	}{
		"own bridge name":            {func(d map[string]any) { d["bridge"] = "br-pods" }, "", true},
		"bridge masquerades":         {func(d map[string]any) { d["ipMasq"] = true }, "", false},
		"promiscuous":                {func(d map[string]any) { d["promiscMode"] = true }, "", false},
		"promiscuous off":            {func(d map[string]any) { d["promiscMode"] = false }, "", true},
		"force address":              {func(d map[string]any) { d["forceAddress"] = true }, "", false},
		"vlan":                       {func(d map[string]any) { d["vlan"] = 10.0 }, "", false},
		"mac spoof check":            {func(d map[string]any) { d["macspoofchk"] = true }, "", false},
		"args":                       {func(d map[string]any) { d["args"] = map[string]any{} }, "", false},
		"another delegate":           {func(d map[string]any) { d["type"] = "ipvlan" }, "", false},
		"another ipam":               {func(d map[string]any) { ipam(d)["type"] = "dhcp" }, "", false},
		"resolv.conf":                {func(d map[string]any) { ipam(d)["resolvConf"] = "/etc/resolv.conf" }, "", false},
		"route scope":                {func(d map[string]any) { ipam(d)["routes"] = []any{map[string]any{"dst": "10.0.0.0/8", "scope": 253.0}} }, "", false},
		"runtime MAC":                {func(d map[string]any) { d["runtimeConfig"] = map[string]any{"mac": "c2:11:22:33:44:55"} }, "", false},
		"CNI_ARGS MAC":               {nil, "IgnoreUnknown=1;MAC=c2:11:22:33:44:55", false},
		"CNI_ARGS IP (host-local's)": {nil, "IgnoreUnknown=1;IP=10.244.7.9", true},
		"CNI_ARGS IP alone":          {nil, "IP=10.244.7.9", false}, // the bridge refuses it
		"CNI_ARGS that do not parse": {nil, "IgnoreUnknown=1;IP", false},
		"runtime MAC, other case":    {func(d map[string]any) { d["runtimeConfig"] = map[string]any{"MAC": "c2:11:22:33:44:55"} }, "", false},
		"resolv.conf, other case":    {func(d map[string]any) { ipam(d)["resolvconf"] = "/etc/resolv.conf" }, "", false},
		"route scope, other case":    {func(d map[string]any) { ipam(d)["routes"] = []any{map[string]any{"dst": "10.0.0.0/8", "Scope": 253.0}} }, "", false},
		"route with a gateway": {func(d map[string]any) {
			ipam(d)["routes"] = []any{map[string]any{"dst": "10.0.0.0/8", "gw": "10.244.7.1"}}
		}, "", true},
		"bad range":             {func(d map[string]any) { ipam(d)["ranges"] = []any{[]any{map[string]any{"subnet": "nope"}}} }, "", false},
		"mtu of the wrong type": {func(d map[string]any) { d["mtu"] = "1450" }, "", false},
	} {
		if _, ok := decide(conf(tc.edit), tc.args); ok != tc.want {
			t.Errorf("%s: in process %v, want %v", name, ok, tc.want)
		}
	}
}
