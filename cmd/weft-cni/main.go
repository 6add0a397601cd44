// Command weft-cni is the CNI plugin, installed as /opt/cni/bin/weft and as
// /opt/cni/bin/flannel so that a flannel conflist works unchanged. It reads
// subnet.env and delegates to bridge + host-local (see internal/cni).
//
// It is exec'd for every pod: it must not import client-go or the etcd
// client (main_test.go enforces it).
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/weft-net/weft/internal/cni"
)

func main() {
	p := &cni.Plugin{}
	skel.PluginMainFuncs(p.Funcs(), cni.Versions, "CNI plugin weft (flannel-compatible)")
}
