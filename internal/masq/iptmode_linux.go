package masq

import (
	"bytes"
	"context"
	"os/exec"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// IPTablesVariant is which of iptables 1.8's two back ends weft writes
// its rules with. The kernel runs both, but kubelet and kube-proxy write
// to one, and rules meant to work with theirs (ours jump from the same
// built-in chains) belong in the same one.
type IPTablesVariant struct {
	// Mode is "nft" or "legacy", or "" for the iptables command as the
	// system installed it (the only one there is, or nothing told us).
	Mode string
	// Why is what the choice was made from, for the log.
	Why string
}

// kubeletChains are what kubelet (1.17 and later) creates in the mangle
// table of the back end it, and kube-proxy, use.
var kubeletChains = [][]byte{[]byte(":KUBE-IPTABLES-HINT "), []byte(":KUBE-KUBELET-CANARY ")}

// saveTimeout bounds each iptables-save the detection runs: a host with
// a wedged xtables lock must not keep the agent from starting.
const saveTimeout = 5 * time.Second

// DetectIPTables chooses the back end as flannel's image does with
// kubernetes-sigs/iptables-wrappers: kubelet's chains in iptables-nft's
// mangle table mean nft; in iptables-legacy's tables, legacy. Without
// both variants installed, or without kubelet's chains (etcd mode on a
// host without Kubernetes), it is the iptables command as installed —
// the wrapper would pick nft there; the host's own choice is the better
// guess outside a container, and is nft in weft's image.
func DetectIPTables(ctx context.Context) IPTablesVariant {
	for _, c := range []string{"iptables-nft-save", "iptables-legacy-save"} {
		if _, err := exec.LookPath(c); err != nil {
			return IPTablesVariant{Why: c + " is not installed: iptables as installed"}
		}
	}
	// legacy-save lists every table: asking it for mangle alone would make
	// the kernel create that table.
	for _, probe := range []struct {
		mode string
		cmd  []string
	}{
		{"nft", []string{"iptables-nft-save", "-t", "mangle"}},
		{"nft", []string{"ip6tables-nft-save", "-t", "mangle"}},
		{"legacy", []string{"iptables-legacy-save"}},
		{"legacy", []string{"ip6tables-legacy-save"}},
	} {
		cctx, cancel := context.WithTimeout(ctx, saveTimeout)
		out, _ := exec.CommandContext(cctx, probe.cmd[0], probe.cmd[1:]...).Output()
		cancel()
		for _, c := range kubeletChains {
			if bytes.Contains(out, c) {
				return IPTablesVariant{Mode: probe.mode, Why: "kubelet's " + string(bytes.TrimSpace(c[1:])) + " chain is in " + probe.cmd[0]}
			}
		}
	}
	return IPTablesVariant{Why: "no kubelet chains in either back end: iptables as installed"}
}

// Command is the iptables (or ip6tables) command of v's back end.
func (v IPTablesVariant) Command(proto iptables.Protocol) string {
	c := "iptables"
	if proto == iptables.ProtocolIPv6 {
		c = "ip6tables"
	}
	if v.Mode != "" {
		c += "-" + v.Mode
	}
	return c
}

// New returns go-iptables on v's back end for proto.
func (v IPTablesVariant) New(proto iptables.Protocol) (*iptables.IPTables, error) {
	return iptables.New(iptables.IPFamily(proto), iptables.Path(v.Command(proto)))
}

// String is the back end for messages: "iptables-legacy", "iptables".
func (v IPTablesVariant) String() string { return v.Command(iptables.ProtocolIPv4) }
