// Package kubeannot is how a node publishes its lease in Kubernetes: the
// annotation keys under --kube-annotation-prefix and the codec between
// lease.Attrs and annotation values, byte-compatible with flannel's
// pkg/subnet/kube (annotations.go, kube.go AcquireLease and nodeToLease),
// so that weft and flannel nodes read each other. It is pure: no client-go.
package kubeannot

import (
	"fmt"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// DefaultPrefix is flannel's --kube-annotation-prefix.
const DefaultPrefix = "flannel.alpha.coreos.com"

// Flag names the command-line flag the prefix comes from, for errors.
const Flag = "--kube-annotation-prefix"

// Key suffixes, as flannel's.
const (
	suffixKubeSubnetManager   = "kube-subnet-manager"
	suffixBackendData         = "backend-data"
	suffixBackendV6Data       = "backend-v6-data"
	suffixBackendType         = "backend-type"
	suffixPublicIP            = "public-ip"
	suffixPublicIPv6          = "public-ipv6"
	suffixNodePublicIP        = "node-public-ip"
	suffixNodePublicIPv6      = "node-public-ipv6"
	suffixPublicIPOverwrite   = "public-ip-overwrite"
	suffixPublicIPv6Overwrite = "public-ipv6-overwrite"
)

// prefixRE is flannel's pattern, anchored at the start. flannel matches it
// unanchored, which also lets through prefixes such as "Example.com" whose
// keys the API server then rejects on the first patch; every prefix whose
// keys Kubernetes accepts matches both ways.
var prefixRE = regexp.MustCompile(`^(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$`)

// Keys are the annotation keys of one prefix.
type Keys struct {
	// Prefix is the normalised prefix every key starts with: it ends in
	// "/" ("flannel.alpha.coreos.com/") or "-" ("example.com/weft-").
	Prefix string

	KubeSubnetManager   string // "true" on a node whose agent publishes a lease
	BackendType         string // "vxlan", "host-gw", "wireguard"; "" for udp
	BackendData         string // JSON, or "null"
	BackendV6Data       string // JSON, or "null"
	PublicIP            string // dotted quad; "0.0.0.0" without IPv4
	PublicIPv6          string
	NodePublicIP        string // set by an operator: overrides --public-ip
	NodePublicIPv6      string // set by an operator: overrides --public-ipv6
	PublicIPOverwrite   string // set by an operator: published instead of the detected IPv4
	PublicIPv6Overwrite string // set by an operator: published instead of the detected IPv6
}

// NewKeys normalises a --kube-annotation-prefix as flannel does (no "/":
// append "/"; a "/" not at the end and no trailing "-": append "-") and
// returns its keys. An error names the flag and the value.
func NewKeys(prefix string) (Keys, error) {
	p, err := normalise(prefix)
	if err != nil {
		return Keys{}, fmt.Errorf("%s %q: %w", Flag, prefix, err)
	}
	k := Keys{
		Prefix:              p,
		KubeSubnetManager:   p + suffixKubeSubnetManager,
		BackendType:         p + suffixBackendType,
		BackendData:         p + suffixBackendData,
		BackendV6Data:       p + suffixBackendV6Data,
		PublicIP:            p + suffixPublicIP,
		PublicIPv6:          p + suffixPublicIPv6,
		NodePublicIP:        p + suffixNodePublicIP,
		NodePublicIPv6:      p + suffixNodePublicIPv6,
		PublicIPOverwrite:   p + suffixPublicIPOverwrite,
		PublicIPv6Overwrite: p + suffixPublicIPv6Overwrite,
	}
	// flannel's pattern allows what Kubernetes does not (an "_" in the
	// domain, a label starting with "-", a name over 63 characters): say
	// so now rather than on the first patch.
	for _, key := range k.all() {
		if errs := validation.IsQualifiedName(key); len(errs) > 0 {
			return Keys{}, fmt.Errorf("%s %q: annotation key %q is not valid in Kubernetes: %s", Flag, prefix, key, strings.Join(errs, "; "))
		}
	}
	return k, nil
}

func normalise(prefix string) (string, error) {
	switch strings.Count(prefix, "/") {
	case 0:
		prefix += "/"
	case 1:
	default:
		return "", fmt.Errorf(`at most one "/" is allowed`)
	}
	if !strings.HasSuffix(prefix, "/") && !strings.HasSuffix(prefix, "-") {
		prefix += "-"
	}
	if !prefixRE.MatchString(prefix) {
		return "", fmt.Errorf(`want a domain name of lowercase letters, digits, "-" and "_", optionally followed by "/" and a name of the same characters (e.g. %s or example.com/weft)`, DefaultPrefix)
	}
	return prefix, nil
}

func (k Keys) all() []string {
	return []string{k.KubeSubnetManager, k.BackendType, k.BackendData, k.BackendV6Data, k.PublicIP, k.PublicIPv6,
		k.NodePublicIP, k.NodePublicIPv6, k.PublicIPOverwrite, k.PublicIPv6Overwrite}
}

// Owns reports whether an annotation key is under this prefix: the only
// annotations the agent reads.
func (k Keys) Owns(key string) bool { return strings.HasPrefix(key, k.Prefix) }
