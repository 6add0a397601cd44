package cni

import (
	"encoding/json"
	"testing"
)

// FuzzLoadNetConf feeds the plugin's stdin to LoadNetConf and
// RenderDelegate: a config either fails with a CNI error or renders a
// delegate config that encodes, carries the network's name and the node's
// subnet, and (unless the user set its mtu or IPAM routes) reads back as
// DEL and CHECK read the saved copy.
func FuzzLoadNetConf(f *testing.F) {
	for _, s := range []string{
		FlannelConflist,
		`{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}}`,
		`{"cniVersion":"1.0.0","name":"n","type":"flannel","subnetFile":"/x/subnet.env","dataDir":"/x/d","ipam":{"dataDir":"/x/ipam","routes":[{"dst":"10.9.0.0/16"}]}}`,
		`{"name":"n","delegate":{"type":"ptp","mtu":9000}}`,
		`{"name":"n","delegate":{"type":7}}`,
		`{"name":"n","delegate":{"ipam":{}}}`,
		`{"name":"n","ipam":{"routes":"x"}}`,
		`{"name":"n","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":8080,"protocol":"tcp"}]}}`,
		`{"name":"n","prevResult":{"cniVersion":"1.0.0","ips":[]}}`,
		`[]`, `null`, `{`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := LoadNetConf(data)
		if err != nil {
			return
		}
		if n.SubnetFile == "" || n.DataDir == "" || n.ReadyFile == "" {
			t.Fatalf("defaults not filled in: %+v", n)
		}
		d, err := RenderDelegate(n, testEnv)
		if err != nil {
			return
		}
		conf, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("rendered delegate does not encode: %v", err)
		}
		if d["name"] != n.Name {
			t.Fatalf("delegate name %v, network %q", d["name"], n.Name)
		}
		typ, ok := d["type"].(string)
		if !ok {
			t.Fatalf("delegate type %v is not a string", d["type"])
		}
		ipam := d["ipam"].(map[string]any)
		ranges := ipam["ranges"].([]any)
		if len(ranges) != 1 || ranges[0].([]any)[0].(map[string]any)["subnet"] != testEnv.Subnet.Masked().String() {
			t.Fatalf("ranges %v, want the node's subnet", ranges)
		}
		if typ == "" {
			return // ADD finds no such plugin and saves nothing
		}
		// DEL needs the type back, whatever else the user put in.
		saved, err := parseDelegated(conf)
		if err != nil || saved.Type != typ {
			t.Fatalf("saved config %s reads back as %+v (%v)", conf, saved, err)
		}
		if _, userMTU := n.Delegate["mtu"]; !userMTU && saved.MTU != testEnv.MTU {
			t.Fatalf("saved config %s: MTU %d, want %d", conf, saved.MTU, testEnv.MTU)
		}
		if _, userRoutes := n.IPAM["routes"]; !userRoutes {
			routes, err := saved.routeDsts()
			if err != nil || len(routes) != 1 || routes[0] != testEnv.Network.Masked() {
				t.Fatalf("saved config %s: routes %v (%v), want the network's", conf, routes, err)
			}
		}
	})
}

// FuzzParseDelegated reads arbitrary bytes as a saved delegate config (a
// file in the data dir): it fails or yields a type.
func FuzzParseDelegated(f *testing.F) {
	f.Add([]byte(`{"type":"bridge","cniVersion":"0.3.1","mtu":1450,"ipam":{"routes":[{"dst":"10.244.0.0/16"}]}}`))
	f.Add([]byte(`{"mtu":1}`))
	f.Add([]byte(`{"type":"bridge","ipam":{"routes":[{"dst":"x"}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := parseDelegated(data)
		if err != nil {
			return
		}
		if d.Type == "" {
			t.Fatal("accepted a saved config without type")
		}
		routes, err := d.routeDsts()
		if err == nil && len(routes) != len(d.Routes) {
			t.Fatalf("%d routes from %d", len(routes), len(d.Routes))
		}
	})
}
