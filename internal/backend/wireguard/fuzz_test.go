package wireguard

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzParseLeaseData reads a remote lease's BackendData as the planner
// does: it fails with a message that quotes the value clipped, or yields a
// key and port that encode to data which parse back the same.
func FuzzParseLeaseData(f *testing.F) {
	for _, s := range []string{
		`{"PublicKey":"jV0tLiqBmDgLxEsLt2KxkKQhYVuSDrCFKWTpJkqgAmo=","Port":51820}`,
		`{"PublicKey":"jV0tLiqBmDgLxEsLt2KxkKQhYVuSDrCFKWTpJkqgAmo="}`,
		`{"PublicKey":"short","Port":1}`, `{"Port":70000}`, `null`, ``, `[]`,
		`{"PublicKey":"` + strings.Repeat("A", 5000) + `"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		k, port, err := ParseLeaseData(raw)
		if err != nil {
			if len(err.Error()) > 1000 {
				t.Fatalf("error of %d bytes: the value is quoted unclipped", len(err.Error()))
			}
			return
		}
		out, err := LeaseData{PublicKey: k.String(), Port: port}.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		k2, port2, err := ParseLeaseData(json.RawMessage(out))
		if err != nil || k2 != k || port2 != port {
			t.Fatalf("%s %d encodes to %s, which parses to %s %d (%v)", k, port, out, k2, port2, err)
		}
	})
}
