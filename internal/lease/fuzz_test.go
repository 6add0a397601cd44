package lease

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseKey: a key either fails or names canonical subnets whose
// rendered key parses back to the same subnets.
func FuzzParseKey(f *testing.F) {
	for _, s := range []string{
		"10.244.1.0-24", "10.244.1.0-24&fd00:0:0:1::-64", "fd00:0:0:1::-64",
		"10.244.1.1-24", "10.244.1.0-33", "10.244.1.0-24fd00::-64", "&fd00::-64",
		"010.244.1.0-24", "10.244.1.0-24&10.244.2.0-24", "", "-",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		v4, v6, err := ParseKey(key)
		if err != nil {
			if v4.IsValid() || v6.IsValid() {
				t.Fatalf("ParseKey(%q) returned subnets with an error", key)
			}
			return
		}
		if !v4.IsValid() && !v6.IsValid() {
			t.Fatalf("ParseKey(%q) accepted no subnet", key)
		}
		if v4.IsValid() && (!v4.Addr().Is4() || v4.Masked() != v4) {
			t.Fatalf("ParseKey(%q): v4 %s not a canonical IPv4 subnet", key, v4)
		}
		if v6.IsValid() && (!v6.Addr().Is6() || v6.Masked() != v6) {
			t.Fatalf("ParseKey(%q): v6 %s not a canonical IPv6 subnet", key, v6)
		}
		again := Key(v4, v6)
		a4, a6, err := ParseKey(again)
		if err != nil || a4 != v4 || a6 != v6 {
			t.Fatalf("ParseKey(%q) = %s %s, rendered %q, parsed back %s %s %v", key, v4, v6, again, a4, a6, err)
		}
	})
}

// FuzzUnmarshalAttrs: a value either fails or yields attributes that
// marshal to bytes which read back to the same attributes and marshal to
// the same bytes (the value weft would write is a fixed point).
func FuzzUnmarshalAttrs(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.json")
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		`{}`, `null`, `[]`, `{"PublicIP":""}`, `{"PublicIP":"::1"}`,
		`{"PublicIP":"192.0.2.1","PublicIPv6":"192.0.2.1"}`,
		`{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":null}`,
		`{"PublicIP":"192.0.2.1","BackendData": { "VNI" : 1 }}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := UnmarshalAttrs(data)
		if err != nil {
			if len(err.Error()) > 2*clipLen+200 {
				t.Fatalf("error of %d bytes: a store value is quoted unclipped", len(err.Error()))
			}
			return
		}
		if a.PublicIP.IsValid() && !a.PublicIP.Is4() || a.PublicIPv6 != nil && !a.PublicIPv6.Is6() {
			t.Fatalf("accepted wrong families: %+v", a)
		}
		m1, err := MarshalAttrs(a)
		if err != nil {
			t.Fatalf("marshal %+v: %v", a, err)
		}
		b, err := UnmarshalAttrs(m1)
		if err != nil {
			t.Fatalf("own value %s does not read back: %v", m1, err)
		}
		m2, err := MarshalAttrs(b)
		if err != nil || !bytes.Equal(m1, m2) {
			t.Fatalf("value not a fixed point: %s then %s (%v)", m1, m2, err)
		}
		if a.PublicIP.IsValid() && !a.Equal(b) {
			t.Fatalf("attributes changed through marshal: %+v then %+v", a, b)
		}
	})
}
