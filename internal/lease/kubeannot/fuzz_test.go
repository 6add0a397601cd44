package kubeannot

import (
	"testing"
)

// FuzzAttrs reads a node's annotations as the Kubernetes store does: they
// either fail or yield attributes which, published over the same
// annotations, read back the same. The overwrite annotations stay unset,
// since an operator's override is published instead of the address read.
func FuzzAttrs(f *testing.F) {
	f.Add("vxlan", "192.0.2.3", `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`, "2001:db8::3", `{"VNI":1,"VtepMAC":"8a:11:0c:5e:20:01"}`, true, true)
	f.Add("host-gw", "192.0.2.3", "null", "", "", true, false)
	f.Add("", "::ffff:192.0.2.3", "", "192.0.2.1", "not json", true, true)
	f.Add("wireguard", "0.0.0.0", `{"PublicKey":"x"}`, "::1", "null", false, true)
	f.Add("vxlan", "192.0.2.3", "null", "2001:db8::3", `{"VNI":1}`, true, true)
	f.Fuzz(func(t *testing.T, typ, pub, data, pub6, data6 string, v4, v6 bool) {
		k, err := NewKeys("flannel.alpha.coreos.com")
		if err != nil {
			t.Fatal(err)
		}
		ann := map[string]string{
			k.BackendType: typ, k.PublicIP: pub, k.BackendData: data,
			k.PublicIPv6: pub6, k.BackendV6Data: data6, k.KubeSubnetManager: "true",
		}
		_, _, _ = k.NodePublicIPs(ann)
		m4, m6 := k.VtepMACs(ann)
		if m4 != nil && len(m4) != 6 || m6 != nil && len(m6) != 6 {
			t.Fatalf("VtepMACs %v %v", m4, m6)
		}
		a, err := k.Attrs(ann, v4, v6)
		if err != nil {
			return
		}
		if v4 && !a.PublicIP.Is4() || v6 && (a.PublicIPv6 == nil || !a.PublicIPv6.Is6() || a.PublicIPv6.Is4In6()) {
			t.Fatalf("Attrs %+v for families v4=%v v6=%v", a, v4, v6)
		}
		pub2, err := k.Published(ann, a)
		if err != nil {
			return // flannel's own refusals (IPv6 data without an address)
		}
		b, err := k.Attrs(pub2, v4, v6)
		if err != nil || !a.Equal(b) {
			t.Fatalf("read %+v, published %v, read back %+v (%v)", a, pub2, b, err)
		}
		if ch, err := k.Changes(pub2, a); err != nil || ch != nil {
			t.Fatalf("published annotations still want changes %v (%v)", ch, err)
		}
	})
}
