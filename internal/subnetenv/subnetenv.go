// Package subnetenv reads and writes /run/flannel/subnet.env, the file the
// agent leaves for the CNI plugin. It is the one codec for the format: the
// agent, the plugin and the doctor all use it.
package subnetenv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/weft-net/weft/internal/atomicfile"
)

// DefaultPath is flannel's location.
const DefaultPath = "/run/flannel/subnet.env"

// Env is the content of subnet.env.
type Env struct {
	Network     netip.Prefix // FLANNEL_NETWORK: the cluster network
	Subnet      netip.Prefix // FLANNEL_SUBNET: first IP of the node's subnet, with its length (10.244.1.1/24)
	IPv6Network netip.Prefix // FLANNEL_IPV6_NETWORK, optional
	IPv6Subnet  netip.Prefix // FLANNEL_IPV6_SUBNET, optional
	MTU         int          // FLANNEL_MTU
	IPMasq      bool         // FLANNEL_IPMASQ: the agent masquerades, so the bridge must not
	// GSOIPv4MaxSize is weft's own WEFT_GSO_IPV4_MAX_SIZE, written only when
	// above 64 KiB: pods' interfaces may build IPv4 GSO packets this large
	// (BIG TCP). flannel's plugin, like a shell, ignores the key.
	GSOIPv4MaxSize int
}

// Marshal renders the file exactly as flanneld writes it.
func (e Env) Marshal() []byte {
	var b bytes.Buffer
	if e.Network.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", e.Network)
		fmt.Fprintf(&b, "FLANNEL_SUBNET=%s\n", e.Subnet)
	}
	if e.IPv6Network.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_IPV6_NETWORK=%s\n", e.IPv6Network)
		fmt.Fprintf(&b, "FLANNEL_IPV6_SUBNET=%s\n", e.IPv6Subnet)
	}
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\n", e.MTU)
	fmt.Fprintf(&b, "FLANNEL_IPMASQ=%v\n", e.IPMasq)
	if e.GSOIPv4MaxSize > 0 {
		fmt.Fprintf(&b, "WEFT_GSO_IPV4_MAX_SIZE=%d\n", e.GSOIPv4MaxSize)
	}
	return b.Bytes()
}

// Parse reads the format. Unknown keys, blank lines and comments are
// ignored, as a shell sourcing the file would; a key present with a bad
// value is an error naming the key.
func Parse(data []byte) (Env, error) {
	var e Env
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		key, val, ok := strings.Cut(text, "=")
		if !ok {
			return Env{}, fmt.Errorf("subnet.env line %d: %q is not KEY=VALUE", line, text)
		}
		key = strings.TrimPrefix(strings.TrimSpace(key), "export ")
		val = strings.Trim(strings.TrimSpace(val), `"'`)
		var err error
		switch key {
		case "FLANNEL_NETWORK":
			e.Network, err = parsePrefix(val)
		case "FLANNEL_SUBNET":
			e.Subnet, err = parsePrefix(val)
		case "FLANNEL_IPV6_NETWORK":
			e.IPv6Network, err = parsePrefix(val)
		case "FLANNEL_IPV6_SUBNET":
			e.IPv6Subnet, err = parsePrefix(val)
		case "FLANNEL_MTU":
			e.MTU, err = strconv.Atoi(val)
		case "FLANNEL_IPMASQ":
			e.IPMasq, err = strconv.ParseBool(val)
		case "WEFT_GSO_IPV4_MAX_SIZE":
			e.GSOIPv4MaxSize, err = strconv.Atoi(val)
			if err == nil && e.GSOIPv4MaxSize < 0 {
				err = errors.New("negative size")
			}
		default:
			continue
		}
		if err != nil {
			return Env{}, fmt.Errorf("subnet.env line %d: %s=%q: %w", line, key, val, err)
		}
		seen[key] = true
	}
	if err := sc.Err(); err != nil {
		return Env{}, fmt.Errorf("subnet.env: %w", err)
	}
	if !seen["FLANNEL_SUBNET"] && !seen["FLANNEL_IPV6_SUBNET"] {
		return Env{}, fmt.Errorf("subnet.env: neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET is set")
	}
	if seen["FLANNEL_SUBNET"] && !seen["FLANNEL_NETWORK"] {
		return Env{}, fmt.Errorf("subnet.env: FLANNEL_SUBNET is set but FLANNEL_NETWORK is not")
	}
	if !seen["FLANNEL_MTU"] {
		return Env{}, fmt.Errorf("subnet.env: FLANNEL_MTU is not set")
	}
	return e, nil
}

// parsePrefix keeps the host part (FLANNEL_SUBNET is 10.244.1.1/24).
func parsePrefix(s string) (netip.Prefix, error) {
	// flannel with several networks writes a comma-separated list; the
	// first is the one a single-network plugin uses.
	s, _, _ = strings.Cut(s, ",")
	return netip.ParsePrefix(s)
}

// Read parses the file at path.
func Read(path string) (Env, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Env{}, err
	}
	e, err := Parse(data)
	if err != nil {
		return Env{}, fmt.Errorf("%s: %w", path, err)
	}
	return e, nil
}

// Write replaces the file at path atomically, mode 0644, creating the
// directory if needed. A reader never sees half a file.
func Write(path string, e Env) error {
	return atomicfile.Write(path, e.Marshal(), 0o644)
}
