package kubeannot

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/weft-net/weft/internal/lease"
)

// Backend types whose publishing rules differ (flannel kube.go:433-463).
// udp publishes the empty type.
const (
	typeVXLAN     = "vxlan"
	typeHostGW    = "host-gw"
	typeWireGuard = "wireguard"
	typeExtension = "extension"
)

// null is how flannel writes absent backend data: json.RawMessage(nil)'s
// MarshalJSON.
const null = "null"

// Changes returns the annotations to write so that a node whose
// annotations are cur publishes a (flannel's AcquireLease, kube.go:420-464),
// only those whose value differs from cur; nil means the node already
// publishes a. cur may be nil.
//
// Always: backend-type and kube-subnet-manager=true. backend-data and
// public-ip unless the backend is vxlan without IPv4 data. backend-v6-data
// and public-ipv6 for vxlan with IPv6 data, and for host-gw, wireguard (with
// IPv6 data) and extension when a has a PublicIPv6. public-ip(v6) is the
// node's public-ip(v6)-overwrite annotation when an operator set one.
func (k Keys) Changes(cur map[string]string, a lease.Attrs) (map[string]string, error) {
	want, err := k.publish(cur, a)
	if err != nil {
		return nil, err
	}
	var out map[string]string
	for key, v := range want {
		if old, ok := cur[key]; ok && old == v {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[key] = v
	}
	return out, nil
}

// Published returns cur with a published on it: what the node's
// annotations are once Changes has been written.
func (k Keys) Published(cur map[string]string, a lease.Attrs) (map[string]string, error) {
	want, err := k.publish(cur, a)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(cur)+len(want))
	for key, v := range cur {
		out[key] = v
	}
	for key, v := range want {
		out[key] = v
	}
	return out, nil
}

func (k Keys) publish(cur map[string]string, a lease.Attrs) (map[string]string, error) {
	bd, err := dataValue(a.BackendData)
	if err != nil {
		return nil, fmt.Errorf("backend data: %w", err)
	}
	v6bd, err := dataValue(a.BackendV6Data)
	if err != nil {
		return nil, fmt.Errorf("backend IPv6 data: %w", err)
	}
	typ := a.BackendType
	want := map[string]string{
		k.BackendType:       typ,
		k.KubeSubnetManager: "true",
	}
	if !(typ == typeVXLAN && bd == null) {
		pub := ip4String(a.PublicIP)
		if o := cur[k.PublicIPOverwrite]; o != "" {
			if _, err := parseIP4(o); err != nil {
				return nil, fmt.Errorf("annotation %s=%q: %w", k.PublicIPOverwrite, o, err)
			}
			pub = o
		}
		want[k.BackendData] = bd
		want[k.PublicIP] = pub
	}
	v6 := a.PublicIPv6 != nil
	if typ == typeVXLAN && v6bd != null ||
		typ == typeWireGuard && v6bd != null && v6 ||
		(typ == typeHostGW || typ == typeExtension) && v6 {
		if !v6 {
			// flannel dereferences the nil address here and panics.
			return nil, errors.New("backend IPv6 data but no public IPv6 address to publish it with")
		}
		pub := ip6String(*a.PublicIPv6)
		if o := cur[k.PublicIPv6Overwrite]; o != "" {
			if _, err := parseIP6(o); err != nil {
				return nil, fmt.Errorf("annotation %s=%q: %w", k.PublicIPv6Overwrite, o, err)
			}
			pub = o
		}
		want[k.BackendV6Data] = v6bd
		want[k.PublicIPv6] = pub
	}
	return want, nil
}

// dataValue renders backend data as flannel writes it: the JSON (compact,
// as every backend marshals it), or "null" when there is none.
func dataValue(d json.RawMessage) (string, error) {
	if len(d) == 0 {
		return null, nil
	}
	var b bytes.Buffer
	if err := json.Compact(&b, d); err != nil {
		return "", err
	}
	return b.String(), nil
}

// ip4String is flannel's ip.IP4.String: an absent address is 0.0.0.0.
func ip4String(a netip.Addr) string {
	if !a.IsValid() {
		return "0.0.0.0"
	}
	return a.Unmap().String()
}

// ip6String is net.IP.String, which flannel uses: an IPv4-mapped address
// prints as IPv4.
func ip6String(a netip.Addr) string {
	if a.Is4In6() {
		return a.Unmap().String()
	}
	return a.String()
}

// parseIP4 is flannel's ip.ParseIP4: any address net.ParseIP reads whose
// To4 is not nil.
func parseIP4(s string) (netip.Addr, error) {
	ip := net.ParseIP(s)
	if ip == nil {
		return netip.Addr{}, errors.New("not an IP address")
	}
	ip4 := ip.To4()
	if ip4 == nil {
		return netip.Addr{}, errors.New("not an IPv4 address")
	}
	return netip.AddrFrom4([4]byte(ip4)), nil
}

// parseIP6 reads an IPv6 address. flannel's ip.ParseIP6 takes an IPv4
// address too, as ::ffff:a.b.c.d, which no node can be reached at over
// IPv6; weft refuses it.
func parseIP6(s string) (netip.Addr, error) {
	ip := net.ParseIP(s)
	if ip == nil {
		return netip.Addr{}, errors.New("not an IP address")
	}
	if ip.To4() != nil {
		return netip.Addr{}, errors.New("not an IPv6 address")
	}
	return netip.AddrFrom16([16]byte(ip)), nil
}

// Managed reports whether the node's agent publishes a lease: the
// kube-subnet-manager annotation is exactly "true".
func (k Keys) Managed(ann map[string]string) bool { return ann[k.KubeSubnetManager] == "true" }

// Attrs reads what a node publishes, for the families the network enables,
// as flannel's nodeToLease (kube.go:542-622): the public-ip (IPv4) resp.
// public-ipv6 annotation must hold an address of its family; the backend
// data are taken as written, except that "null" and absent data are no data
// (as in an etcd lease) and data that are not JSON are an error.
func (k Keys) Attrs(ann map[string]string, v4, v6 bool) (lease.Attrs, error) {
	var a lease.Attrs
	if v4 {
		ip, err := parseIP4(ann[k.PublicIP])
		if err != nil {
			return lease.Attrs{}, fmt.Errorf("annotation %s=%q: %w", k.PublicIP, ann[k.PublicIP], err)
		}
		a.PublicIP = ip
		if a.BackendData, err = dataAttr(k.BackendData, ann); err != nil {
			return lease.Attrs{}, err
		}
	}
	if v6 {
		ip, err := parseIP6(ann[k.PublicIPv6])
		if err != nil {
			return lease.Attrs{}, fmt.Errorf("annotation %s=%q: %w", k.PublicIPv6, ann[k.PublicIPv6], err)
		}
		a.PublicIPv6 = &ip
		if a.BackendV6Data, err = dataAttr(k.BackendV6Data, ann); err != nil {
			return lease.Attrs{}, err
		}
	}
	a.BackendType = ann[k.BackendType]
	return a, nil
}

func dataAttr(key string, ann map[string]string) (json.RawMessage, error) {
	v := ann[key]
	// JSON's own whitespace around null is still no data: published
	// again it would be written as plain null and read back as none.
	if t := strings.Trim(v, " \t\r\n"); t == "" || t == null {
		return nil, nil
	}
	if !json.Valid([]byte(v)) {
		return nil, fmt.Errorf("annotation %s=%q: not JSON", key, v)
	}
	return json.RawMessage(v), nil
}

// NodePublicIPs returns the node-public-ip and node-public-ipv6
// annotations, which an operator sets to override --public-ip and
// --public-ipv6 (flannel main.go:306-312); an address is invalid when its
// annotation is absent or empty.
func (k Keys) NodePublicIPs(ann map[string]string) (v4, v6 netip.Addr, err error) {
	if s := ann[k.NodePublicIP]; s != "" {
		if v4, err = parseIP4(s); err != nil {
			return netip.Addr{}, netip.Addr{}, fmt.Errorf("annotation %s=%q: %w", k.NodePublicIP, s, err)
		}
	}
	if s := ann[k.NodePublicIPv6]; s != "" {
		if v6, err = parseIP6(s); err != nil {
			return netip.Addr{}, netip.Addr{}, fmt.Errorf("annotation %s=%q: %w", k.NodePublicIPv6, s, err)
		}
	}
	return v4, v6, nil
}

// VtepMACs returns the VtepMACs the node published in its backend-data and
// backend-v6-data annotations ({"VNI":1,"VtepMAC":"…"}), so that a
// restarted agent gives its VXLAN devices the MACs the other nodes already
// route to (flannel kube.go:698-731). A MAC is nil when its annotation is
// absent or holds none. Unlike flannel, which reads "<raw prefix>/backend-data"
// and so loses the MAC with a prefix such as example.com/weft, these are
// the keys the agent writes.
func (k Keys) VtepMACs(ann map[string]string) (v4, v6 net.HardwareAddr) {
	return vtepMAC(ann[k.BackendData]), vtepMAC(ann[k.BackendV6Data])
}

func vtepMAC(data string) net.HardwareAddr {
	var d struct{ VtepMAC string }
	if data == "" || json.Unmarshal([]byte(data), &d) != nil || d.VtepMAC == "" {
		return nil
	}
	mac, err := net.ParseMAC(d.VtepMAC)
	if err != nil || len(mac) != 6 {
		return nil
	}
	return mac
}
