// Package config parses and validates the network configuration JSON that
// flannel users keep at <etcd-prefix>/config or in net-conf.json. Semantics
// (defaults, limits, case-insensitive keys) follow flannel's exactly so that a
// flannel config works unchanged.
package config

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"go4.org/netipx"
)

// Backend types.
const (
	BackendVXLAN  = "vxlan"
	BackendHostGW = "host-gw"
	BackendUDP    = "udp"
	// BackendWireGuard encrypts pod traffic: flannel's "wireguard" backend.
	BackendWireGuard = "wireguard"
)

// Default UDP ports per backend (flannel's).
const (
	DefaultVXLANPort = 8472
	DefaultUDPPort   = 8285
	DefaultVNI       = 1

	DefaultWireGuardPort   = 51820
	DefaultWireGuardPortV6 = 51821
)

// WireGuard modes (Backend.Mode), flannel's: separate devices per address
// family, or one device whose peers are reached over IPv4, IPv6 or the
// family auto picks per peer.
const (
	WireGuardSeparate = "separate"
	WireGuardAuto     = "auto"
	WireGuardIPv4     = "ipv4"
	WireGuardIPv6     = "ipv6"
)

// WireGuard implementations (Backend.Implementation, weft's own key): the
// kernel's device where the module exists, else wireguard-go in weftd.
const (
	WireGuardImplAuto      = "auto"
	WireGuardImplKernel    = "kernel"
	WireGuardImplUserspace = "userspace"
)

// Network is a parsed, validated and defaulted network config.
type Network struct {
	EnableIPv4     bool
	EnableIPv6     bool
	EnableNFTables bool

	Network   netip.Prefix // IPv4 cluster network; valid when EnableIPv4
	SubnetLen int
	SubnetMin netip.Addr
	SubnetMax netip.Addr

	IPv6Network   netip.Prefix // valid when EnableIPv6
	IPv6SubnetLen int
	IPv6SubnetMin netip.Addr
	IPv6SubnetMax netip.Addr

	Backend Backend
}

// Backend is the "Backend" object. Only the keys weft's backends read are
// decoded; Raw keeps the object as written.
type Backend struct {
	Type          string
	VNI           int
	Port          int
	MTU           int
	GBP           bool
	DirectRouting bool
	Learning      bool
	MacPrefix     string

	// WireGuard (Type "wireguard") keys, flannel's, defaulted.
	ListenPort   int
	ListenPortV6 int
	PSK          string // base64 pre-shared key, "" for none
	// PersistentKeepaliveInterval in seconds; 0 is off.
	PersistentKeepaliveInterval int
	Mode                        string
	// Implementation is weft's: auto, kernel or userspace. flannel ignores it.
	Implementation string

	Raw json.RawMessage
}

// FieldError says which key was wrong and why. Every validation error is one.
type FieldError struct {
	Field  string
	Value  string // as written, or "" when the key is missing
	Reason string
}

func (e *FieldError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("network config: %s: %s", e.Field, e.Reason)
	}
	return fmt.Sprintf("network config: %s %s: %s", e.Field, e.Value, e.Reason)
}

func fieldErr(field, value, format string, args ...any) error {
	return &FieldError{Field: field, Value: value, Reason: fmt.Sprintf(format, args...)}
}

// wire is the JSON shape; pointers tell "absent" from zero.
type wire struct {
	EnableIPv4     *bool
	EnableIPv6     bool
	EnableNFTables bool
	Network        *string
	SubnetLen      *int
	SubnetMin      *string
	SubnetMax      *string
	IPv6Network    *string
	IPv6SubnetLen  *int
	IPv6SubnetMin  *string
	IPv6SubnetMax  *string
	Backend        json.RawMessage
}

type backendWire struct {
	Type          *string
	VNI           *int
	Port          *int
	MTU           *int
	GBP           bool
	DirectRouting bool
	Learning      bool
	MacPrefix     string

	ListenPort                  *int
	ListenPortV6                *int
	PSK                         string
	PersistentKeepaliveInterval *int
	Mode                        *string
	Implementation              *string
}

var (
	knownKeys = keySet("EnableIPv4", "EnableIPv6", "EnableNFTables", "Network", "Networks",
		"SubnetLen", "SubnetMin", "SubnetMax", "IPv6Network", "IPv6Networks", "IPv6SubnetLen",
		"IPv6SubnetMin", "IPv6SubnetMax", "Backend")
	knownBackendKeys = keySet("Type", "VNI", "Port", "MTU", "GBP", "DirectRouting",
		"Learning", "MacPrefix", "ListenPort", "ListenPortV6", "PSK", "PersistentKeepaliveInterval",
		"Mode", "Implementation")
)

func keySet(keys ...string) map[string]bool {
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[strings.ToLower(k)] = true
	}
	return m
}

// Parse decodes, defaults and validates a network config. Warnings name keys
// that were ignored and defaults a user may not expect (the udp backend when
// Backend.Type is absent).
func Parse(data []byte) (*Network, []string, error) {
	var w wire
	if err := json.Unmarshal(data, &w); err != nil {
		return nil, nil, fmt.Errorf("network config: not valid JSON: %w", describeJSONError(data, err))
	}
	var warnings []string
	warnings = append(warnings, unknownKeys(data, knownKeys, "")...)

	n := &Network{EnableIPv4: true, EnableIPv6: w.EnableIPv6, EnableNFTables: w.EnableNFTables}
	if w.EnableIPv4 != nil {
		n.EnableIPv4 = *w.EnableIPv4
	}
	if !n.EnableIPv4 && !n.EnableIPv6 {
		return nil, warnings, fieldErr("EnableIPv4", "false", "at least one of EnableIPv4 and EnableIPv6 must be true")
	}
	if n.EnableIPv4 {
		if err := parseFamily(&n.Network, &n.SubnetLen, &n.SubnetMin, &n.SubnetMax, family{
			prefix: "", bits: 32, defaultLen: defaultLen4, maxLen: 30,
		}, w.Network, w.SubnetLen, w.SubnetMin, w.SubnetMax); err != nil {
			return nil, warnings, err
		}
	}
	if n.EnableIPv6 {
		if err := parseFamily(&n.IPv6Network, &n.IPv6SubnetLen, &n.IPv6SubnetMin, &n.IPv6SubnetMax, family{
			prefix: "IPv6", bits: 128, defaultLen: defaultLen6, maxLen: 126,
		}, w.IPv6Network, w.IPv6SubnetLen, w.IPv6SubnetMin, w.IPv6SubnetMax); err != nil {
			return nil, warnings, err
		}
	}
	b, bw, err := parseBackend(w.Backend)
	if err != nil {
		return nil, warnings, err
	}
	warnings = append(warnings, bw...)
	n.Backend = b
	if n.EnableIPv6 && b.Type == BackendUDP {
		// flannel's udp backend carries IPv4 only; refusing here beats a
		// node that leases an IPv6 subnet no peer can route to.
		return nil, warnings, fieldErr("EnableIPv6", "true", "the udp backend (Backend.Type %q) carries IPv4 only; use vxlan or host-gw for IPv6", BackendUDP)
	}
	return n, warnings, nil
}

type family struct {
	prefix     string // "" or "IPv6", prepended to field names
	bits       int
	defaultLen func(netLen int) (int, error)
	maxLen     int
}

// defaultLen4 is flannel's rule: /24 per node when the network is /22 or
// larger, else four subnets; a network smaller than /28 cannot be split.
func defaultLen4(netLen int) (int, error) {
	switch {
	case netLen > 28:
		return 0, errors.New("network is too small: the smallest usable network is /28")
	case netLen <= 22:
		return 24, nil
	default:
		return netLen + 2, nil
	}
}

func defaultLen6(netLen int) (int, error) {
	switch {
	case netLen > 124:
		return 0, errors.New("network is too small: the smallest usable IPv6 network is /124")
	case netLen <= 62:
		return 64, nil
	default:
		return netLen + 2, nil
	}
}

func parseFamily(network *netip.Prefix, subnetLen *int, subnetMin, subnetMax *netip.Addr, f family,
	wNet *string, wLen *int, wMin, wMax *string) error {
	netKey := f.prefix + "Network"
	if wNet == nil || *wNet == "" {
		example := "10.244.0.0/16"
		if f.bits == 128 {
			example = "fd00:10:244::/56"
		}
		if f.prefix != "" {
			return fieldErr(netKey, "", "missing; EnableIPv6 needs it (for example %q)", example)
		}
		return fieldErr(netKey, "", "missing; it is required (for example %q)", example)
	}
	p, err := netip.ParsePrefix(*wNet)
	if err != nil {
		return fieldErr(netKey, quote(*wNet), "not a CIDR: %v", err)
	}
	if (f.bits == 32) != p.Addr().Is4() || p.Addr().Is4In6() {
		want := "IPv4"
		if f.bits == 128 {
			want = "IPv6"
		}
		return fieldErr(netKey, quote(*wNet), "must be an %s CIDR", want)
	}
	p = p.Masked()
	*network = p

	if wLen != nil {
		l := *wLen
		val := fmt.Sprint(l)
		switch {
		case l > f.maxLen:
			return fieldErr(f.prefix+"SubnetLen", val, "must be at most %d (each node needs room for its gateway and pods)", f.maxLen)
		case l < p.Bits()+2:
			return fieldErr(f.prefix+"SubnetLen", val, "%s %s must hold at least four subnets, so %sSubnetLen must be at least %d", netKey, p, f.prefix, p.Bits()+2)
		}
		*subnetLen = l
	} else {
		l, err := f.defaultLen(p.Bits())
		if err != nil {
			return fieldErr(netKey, p.String(), "%v", err)
		}
		*subnetLen = l
	}

	// Subnet bounds are whole subnets of the network: the first one lies
	// right after the network's own first subnet, the last one holds the
	// network's last address.
	firstSubnet := netip.PrefixFrom(p.Addr(), *subnetLen)
	defMin := netipx.PrefixLastIP(firstSubnet).Next()
	defMax := netip.PrefixFrom(netipx.PrefixLastIP(p), *subnetLen).Masked().Addr()

	parseBound := func(key string, w *string, def netip.Addr) (netip.Addr, error) {
		if w == nil || *w == "" {
			return def, nil
		}
		a, err := netip.ParseAddr(*w)
		if err != nil {
			return netip.Addr{}, fieldErr(key, quote(*w), "not an IP address")
		}
		if !p.Contains(a) {
			return netip.Addr{}, fieldErr(key, quote(*w), "outside %s %s", netKey, p)
		}
		if netip.PrefixFrom(a, *subnetLen).Masked().Addr() != a {
			return netip.Addr{}, fieldErr(key, quote(*w), "not on a /%d boundary (%sSubnetLen)", *subnetLen, f.prefix)
		}
		return a, nil
	}
	// flannel skips the first subnet: its network address would clash with the
	// cluster network's own.
	lo, err := parseBound(f.prefix+"SubnetMin", wMin, defMin)
	if err != nil {
		return err
	}
	hi, err := parseBound(f.prefix+"SubnetMax", wMax, defMax)
	if err != nil {
		return err
	}
	if hi.Less(lo) {
		return fieldErr(f.prefix+"SubnetMax", quote(hi.String()), "below %sSubnetMin %s", f.prefix, lo)
	}
	*subnetMin, *subnetMax = lo, hi
	return nil
}

func parseBackend(raw json.RawMessage) (Backend, []string, error) {
	b := Backend{Raw: raw}
	var warnings []string
	if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		b.Type = BackendUDP
		warnings = append(warnings, `Backend.Type not set: using "udp" as flannel does; set "vxlan" for the kernel datapath`)
		return b, warnings, b.defaults()
	}
	var w backendWire
	if err := json.Unmarshal(raw, &w); err != nil {
		return b, nil, fmt.Errorf("network config: Backend: %w", describeJSONError(raw, err))
	}
	warnings = append(warnings, unknownKeys(raw, knownBackendKeys, "Backend.")...)
	if w.Type == nil || *w.Type == "" {
		b.Type = BackendUDP
		warnings = append(warnings, `Backend.Type not set: using "udp" as flannel does; set "vxlan" for the kernel datapath`)
	} else {
		b.Type = strings.ToLower(*w.Type)
	}
	switch b.Type {
	case BackendVXLAN, BackendHostGW, BackendUDP, BackendWireGuard:
	default:
		return b, warnings, fieldErr("Backend.Type", quote(*w.Type), "unknown backend; weft supports %q, %q, %q and %q", BackendVXLAN, BackendHostGW, BackendUDP, BackendWireGuard)
	}
	if b.Type == BackendWireGuard {
		if err := b.wireGuard(w); err != nil {
			return b, warnings, err
		}
	}
	if w.VNI != nil {
		b.VNI = *w.VNI
	}
	if w.Port != nil {
		b.Port = *w.Port
	}
	if w.MTU != nil {
		b.MTU = *w.MTU
	}
	b.GBP, b.DirectRouting, b.Learning, b.MacPrefix = w.GBP, w.DirectRouting, w.Learning, w.MacPrefix
	return b, warnings, b.defaults()
}

// wireGuard decodes and checks the wireguard keys, with flannel's defaults.
func (b *Backend) wireGuard(w backendWire) error {
	b.ListenPort, b.ListenPortV6 = DefaultWireGuardPort, DefaultWireGuardPortV6
	b.Mode, b.Implementation = WireGuardSeparate, WireGuardImplAuto
	for _, port := range []struct {
		key string
		w   *int
		dst *int
	}{{"Backend.ListenPort", w.ListenPort, &b.ListenPort}, {"Backend.ListenPortV6", w.ListenPortV6, &b.ListenPortV6}} {
		if port.w == nil {
			continue
		}
		if *port.w < 1 || *port.w > 65535 {
			return fieldErr(port.key, fmt.Sprint(*port.w), "must be between 1 and 65535")
		}
		*port.dst = *port.w
	}
	if w.PersistentKeepaliveInterval != nil {
		v := *w.PersistentKeepaliveInterval
		if v < 0 || v > 65535 {
			return fieldErr("Backend.PersistentKeepaliveInterval", fmt.Sprint(v), "must be between 0 (off) and 65535 seconds")
		}
		b.PersistentKeepaliveInterval = v
	}
	if w.PSK != "" {
		// The key itself stays out of the message: it is a secret.
		k, err := base64.StdEncoding.DecodeString(w.PSK)
		if err != nil || len(k) != 32 {
			return fieldErr("Backend.PSK", fmt.Sprintf("(%d characters)", len(w.PSK)), "not a base64 32-byte key (make one with `wg genpsk`)")
		}
		b.PSK = w.PSK
	}
	if w.Mode != nil {
		switch m := strings.ToLower(*w.Mode); m {
		case WireGuardSeparate, WireGuardAuto, WireGuardIPv4, WireGuardIPv6:
			b.Mode = m
		default:
			return fieldErr("Backend.Mode", quote(*w.Mode), "want %q, %q, %q or %q", WireGuardSeparate, WireGuardAuto, WireGuardIPv4, WireGuardIPv6)
		}
	}
	if w.Implementation != nil {
		switch i := strings.ToLower(*w.Implementation); i {
		case WireGuardImplAuto, WireGuardImplKernel, WireGuardImplUserspace:
			b.Implementation = i
		default:
			return fieldErr("Backend.Implementation", quote(*w.Implementation), "want %q, %q or %q", WireGuardImplAuto, WireGuardImplKernel, WireGuardImplUserspace)
		}
	}
	return nil
}

// defaults fills per-backend defaults and checks ranges.
func (b *Backend) defaults() error {
	switch b.Type {
	case BackendVXLAN:
		if b.VNI == 0 {
			b.VNI = DefaultVNI
		}
		if b.Port == 0 {
			b.Port = DefaultVXLANPort
		}
	case BackendUDP:
		if b.Port == 0 {
			b.Port = DefaultUDPPort
		}
	}
	if b.VNI < 0 || b.VNI > 1<<24-1 {
		return fieldErr("Backend.VNI", fmt.Sprint(b.VNI), "must be between 0 and 16777215")
	}
	if b.Port < 0 || b.Port > 65535 {
		return fieldErr("Backend.Port", fmt.Sprint(b.Port), "must be between 1 and 65535")
	}
	if b.MTU != 0 && (b.MTU < 576 || b.MTU > 65535) {
		return fieldErr("Backend.MTU", fmt.Sprint(b.MTU), "must be between 576 and 65535 (0 derives it from the underlay)")
	}
	return nil
}

// unknownKeys lists top-level keys of obj that are not in known. JSON keys
// are case-insensitive, as encoding/json (and flannel) treat them.
func unknownKeys(obj []byte, known map[string]bool, prefix string) []string {
	var m map[string]json.RawMessage
	if json.Unmarshal(obj, &m) != nil {
		return nil
	}
	var out []string
	for k := range m {
		if !known[strings.ToLower(k)] {
			out = append(out, fmt.Sprintf("unknown key %q ignored", prefix+k))
		}
	}
	sort.Strings(out)
	return out
}

// describeJSONError adds the line and column to a syntax error.
func describeJSONError(data []byte, err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line, col := 1, 1
		for _, c := range data[:min(int(se.Offset), len(data))] {
			if c == '\n' {
				line, col = line+1, 1
			} else {
				col++
			}
		}
		return fmt.Errorf("line %d column %d: %w", line, col, err)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("key %s: %s is not a %s", te.Field, te.Value, te.Type)
	}
	return err
}

func quote(s string) string { return fmt.Sprintf("%q", s) }
