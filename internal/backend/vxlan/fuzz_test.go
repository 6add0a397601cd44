package vxlan

import (
	"encoding/json"
	"testing"
)

// FuzzParseBackendData reads a remote lease's BackendData as the planner
// does: it fails, or yields a unicast VtepMAC and encodes to data that
// parse back the same.
func FuzzParseBackendData(f *testing.F) {
	for _, s := range []string{
		`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`, `{"VNI":1}`, `{"VtepMAC":"ff:ff:ff:ff:ff:ff"}`,
		`{"VNI":"1","VtepMAC":"c6:d2:32:6f:8f:44"}`, `{"VtepMAC":"c6-d2-32-6f-8f-44"}`,
		`{"VtepMAC":"00:00:5e:00:53:01:02:03"}`, `null`, `[]`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		d, err := ParseBackendData(raw)
		if err != nil {
			return
		}
		if !d.VtepMAC.IsUnicast() {
			t.Fatalf("accepted VtepMAC %s", d.VtepMAC)
		}
		out, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("encoding %+v: %v", d, err)
		}
		back, err := ParseBackendData(out)
		if err != nil || back != d {
			t.Fatalf("%+v encodes to %s, which parses to %+v (%v)", d, out, back, err)
		}
	})
}
