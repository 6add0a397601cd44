package subnetenv

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse: a file either fails or yields an Env that names its subnets
// with their networks and whose Marshal parses back to the same Env.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.env")
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"", "FLANNEL_MTU=1450\n",
		"# comment\nexport FLANNEL_NETWORK=\"10.244.0.0/16\"\nFLANNEL_SUBNET='10.244.1.1/24'\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=1\n",
		"FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24,10.245.1.1/24\nFLANNEL_MTU=1450\n",
		"FLANNEL_IPV6_SUBNET=fd00::1/64\nFLANNEL_MTU=1280\nWEFT_GSO_IPV4_MAX_SIZE=-1\n",
		"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=x\n",
		"garbage\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := Parse(data)
		if err != nil {
			if e != (Env{}) {
				t.Fatalf("Env %+v returned with an error", e)
			}
			return
		}
		if !e.Subnet.IsValid() && !e.IPv6Subnet.IsValid() {
			t.Fatalf("accepted without a subnet: %+v", e)
		}
		if e.Subnet.IsValid() && !e.Network.IsValid() {
			t.Fatalf("accepted FLANNEL_SUBNET without FLANNEL_NETWORK: %+v", e)
		}
		if e.GSOIPv4MaxSize < 0 {
			t.Fatalf("accepted a negative GSO size: %+v", e)
		}
		// Marshal writes each subnet beside its network; an Env missing
		// one of a pair is what a hand-written file may hold, not the agent.
		if e.Network.IsValid() != e.Subnet.IsValid() || e.IPv6Network.IsValid() != e.IPv6Subnet.IsValid() {
			return
		}
		out := e.Marshal()
		back, err := Parse(out)
		if err != nil || back != e {
			t.Fatalf("%+v marshals to %q, which parses to %+v (%v)", e, out, back, err)
		}
	})
}
