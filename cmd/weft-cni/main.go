// Command weft-cni is the CNI plugin, installed as /opt/cni/bin/weft and as
// /opt/cni/bin/flannel so that a flannel conflist works unchanged. It reads
// subnet.env and delegates to bridge + host-local (see internal/cni).
//
// It is exec'd for every pod: it must not import client-go or the etcd
// client (main_test.go enforces it).
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/weft-net/weft/internal/buildinfo"
	"github.com/weft-net/weft/internal/cni"
)

// version is set at link time by the Makefile:
// -ldflags "-X main.version=$(git describe --tags --always --dirty)".
var version = ""

const usage = `Usage: weft-cni

weft-cni is weft's CNI plugin, installed as flannel (and weft) in the CNI
bin dir so that flannel's conflist works unchanged; weft install-cni puts
it there. The container runtime runs it with CNI_COMMAND (ADD, DEL, CHECK,
STATUS, GC, VERSION) and the network config on stdin. It reads the subnet
file weftd writes and delegates to bridge with host-local IPAM, keeping
each pod's delegate config so that DEL works after the subnet file is gone.

Plugin config keys (besides flannel's delegate and ipam):
  subnetFile  default %s
  dataDir     default %s

With WEFT_CNI_TIMINGS naming a file, each ADD appends one JSON line to it:
the time each of its steps took (weft lab bench reads them).

Run without CNI_COMMAND it prints what it is; --version prints its version.
`

func main() {
	// The runtime passes no arguments: any are a person's.
	if len(os.Args) > 1 && os.Getenv("CNI_COMMAND") == "" {
		switch os.Args[1] {
		case "-h", "-help", "--help", "help":
			fmt.Printf(usage, cni.DefaultSubnetFile, cni.DefaultDataDir)
			return
		case "-version", "--version", "version":
			fmt.Println(buildinfo.Version(version))
			return
		}
		kind := "argument"
		if strings.HasPrefix(os.Args[1], "-") {
			kind = "flag"
		}
		fmt.Fprintf(os.Stderr, "weft-cni: unknown %s %q: the plugin is run by the container runtime, with CNI_COMMAND set (see weft-cni --help)\n", kind, os.Args[1])
		os.Exit(2)
	}
	p := &cni.Plugin{TimingsFile: os.Getenv(cni.TimingsEnv)}
	skel.PluginMainFuncs(p.Funcs(), cni.Versions, "CNI plugin weft (flannel-compatible) "+buildinfo.Version(version))
}
