package subnetenv

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGolden(t *testing.T) {
	tests := []struct {
		file string
		env  Env
	}{
		{"v4.env", Env{Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.1.1/24"), MTU: 1450, IPMasq: true}},
		{"dual.env", Env{Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.1.1/24"),
			IPv6Network: netip.MustParsePrefix("fd00:10:244::/56"), IPv6Subnet: netip.MustParsePrefix("fd00:10:244:1::1/64"), MTU: 1430}},
		{"bigtcp.env", Env{Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.1.1/24"), MTU: 1500, IPMasq: true, GSOIPv4MaxSize: 196608}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if got := tt.env.Marshal(); string(got) != string(want) {
				t.Errorf("marshal:\n%s\nwant:\n%s", got, want)
			}
			back, err := Parse(want)
			if err != nil {
				t.Fatal(err)
			}
			if back != tt.env {
				t.Errorf("parse: got %+v, want %+v", back, tt.env)
			}
		})
	}
}

func TestParseTolerant(t *testing.T) {
	e, err := Parse([]byte("# written by hand\n\nexport FLANNEL_NETWORK=\"10.244.0.0/16\"\nFLANNEL_SUBNET=10.244.3.1/24,10.245.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\nOTHER=1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if e.Subnet != netip.MustParsePrefix("10.244.3.1/24") || e.Network != netip.MustParsePrefix("10.244.0.0/16") {
		t.Errorf("got %+v", e)
	}
}

func TestParseErrors(t *testing.T) {
	tests := map[string]string{
		"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=banana\nFLANNEL_MTU=1450\n":                                   "FLANNEL_SUBNET",
		"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=x\n":                               "FLANNEL_MTU",
		"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1450\n":                                                          "neither",
		"FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n":                                                           "FLANNEL_NETWORK",
		"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n":                                              "FLANNEL_MTU",
		"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nfoo\n":                       "KEY=VALUE",
		"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nWEFT_GSO_IPV4_MAX_SIZE=-1\n": "WEFT_GSO_IPV4_MAX_SIZE",
	}
	for in, want := range tests {
		if _, err := Parse([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want error mentioning %s", in, err, want)
		}
	}
}

func TestWriteAtomic(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "flannel")
	path := filepath.Join(dir, "subnet.env")
	e := Env{Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.1.1/24"), MTU: 1450}
	if err := Write(path, e); err != nil {
		t.Fatal(err)
	}
	e.MTU = 1400
	if err := Write(path, e); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", fi.Mode().Perm())
	}
	got, err := Read(path)
	if err != nil || got != e {
		t.Errorf("Read = %+v, %v; want %+v", got, err, e)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temp files left behind: %v", entries)
	}
}
