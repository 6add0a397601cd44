package config

import (
	"errors"
	"strings"
	"testing"
)

func TestWireGuardDefaults(t *testing.T) {
	n, warnings, err := Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings: %q", warnings)
	}
	b := n.Backend
	if b.Type != BackendWireGuard || b.ListenPort != 51820 || b.ListenPortV6 != 51821 || b.Mode != WireGuardSeparate ||
		b.PersistentKeepaliveInterval != 0 || b.PSK != "" || b.MTU != 0 || b.Implementation != WireGuardImplAuto {
		t.Errorf("defaults: got %+v", b)
	}
}

func TestWireGuardKeys(t *testing.T) {
	const psk = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
	n, warnings, err := Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"WireGuard","ListenPort":4000,` +
		`"listenportv6":4001,"PSK":"` + psk + `","PersistentKeepaliveInterval":25,"Mode":"Auto","MTU":1400,"Implementation":"userspace"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings: %q", warnings)
	}
	b := n.Backend
	if b.ListenPort != 4000 || b.ListenPortV6 != 4001 || b.PSK != psk || b.PersistentKeepaliveInterval != 25 ||
		b.Mode != WireGuardAuto || b.MTU != 1400 || b.Implementation != WireGuardImplUserspace {
		t.Errorf("got %+v", b)
	}
}

func TestWireGuardInvalid(t *testing.T) {
	tests := []struct {
		backend string
		field   string
		msg     string // a part of the message, which names the key and the value
	}{
		{`"ListenPort":0`, "Backend.ListenPort", "Backend.ListenPort 0: must be between 1 and 65535"},
		{`"ListenPort":70000`, "Backend.ListenPort", "Backend.ListenPort 70000"},
		{`"ListenPortV6":-1`, "Backend.ListenPortV6", "Backend.ListenPortV6 -1"},
		{`"PersistentKeepaliveInterval":-5`, "Backend.PersistentKeepaliveInterval", "Backend.PersistentKeepaliveInterval -5"},
		{`"PSK":"c2hvcnQ="`, "Backend.PSK", "Backend.PSK (8 characters): not a base64 32-byte key"},
		{`"PSK":"not base64 at all!!"`, "Backend.PSK", "not a base64 32-byte key"},
		{`"Mode":"both"`, "Backend.Mode", `Backend.Mode "both": want "separate", "auto", "ipv4" or "ipv6"`},
		{`"Implementation":"ebpf"`, "Backend.Implementation", `Backend.Implementation "ebpf"`},
		{`"MTU":100`, "Backend.MTU", "Backend.MTU 100"},
	}
	for _, tt := range tests {
		t.Run(tt.backend, func(t *testing.T) {
			_, _, err := Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard",` + tt.backend + `}}`))
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("got %v, want a FieldError for %s", err, tt.field)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("got %q, want it to contain %q", err, tt.msg)
			}
		})
	}
}

// The PSK is a secret: an error about it never repeats it.
func TestWireGuardPSKNotInError(t *testing.T) {
	const bad = "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
	_, _, err := Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","PSK":"` + bad + `"}}`))
	if err == nil || strings.Contains(err.Error(), bad) {
		t.Errorf("got %v", err)
	}
}

// The wireguard keys mean nothing to the other backends; they are accepted
// (flannel ignores them too) but not defaulted there.
func TestWireGuardKeysIgnoredByOtherBackends(t *testing.T) {
	n, warnings, err := Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Mode":"bogus"}}`))
	if err != nil || len(warnings) != 0 {
		t.Fatal(err, warnings)
	}
	if n.Backend.Mode != "" || n.Backend.ListenPort != 0 {
		t.Errorf("vxlan got wireguard settings: %+v", n.Backend)
	}
}
