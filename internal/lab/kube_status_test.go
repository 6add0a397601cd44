package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKubeStatusGolden: the table weft lab status prints for a kube lab,
// with a node that publishes, an udp node (empty backend-type), one whose
// agent has not published yet and one not registered.
func TestKubeStatusGolden(t *testing.T) {
	s := KubeStatus{APIServer: "https://192.0.2.254:6443", Nodes: []KubeNodeStatus{
		{Index: 1, Name: "weft-abc123-n1", Found: true, PodCIDRs: []string{"10.244.0.0/24"}, Managed: true, BackendType: "vxlan", PublicIP: "192.0.2.1", NetworkUnavailable: "False (FlannelIsUp)"},
		{Index: 2, Name: "weft-abc123-n2", Found: true, PodCIDRs: []string{"10.244.1.0/24"}, Managed: true, PublicIP: "192.0.2.2", NetworkUnavailable: "False (FlannelIsUp)"},
		{Index: 3, Name: "weft-abc123-n3", Found: true},
		{Index: 4, Name: "weft-abc123-n4"},
	}}
	var b strings.Builder
	s.Write(&b, "  ")
	want, err := os.ReadFile(filepath.Join("testdata", "kube_status.golden"))
	if err != nil {
		t.Fatal(err)
	}
	if b.String() != string(want) {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}
