package kubecp

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/pki"
)

func parseCert(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	if b == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestServingCertVerifiesForEveryAddressAndName(t *testing.T) {
	ca, err := loadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{BinDir: "x", DataDir: "x", Address: netip.MustParseAddr("192.0.2.254"),
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00:96::/108")}}
	certPEM, keyPEM, err := servingCert(ca, cfg.servingIPs(), cfg.servingNames())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.ParseKey(keyPEM); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert())
	cert := parseCert(t, certPEM)
	for _, host := range []string{"192.0.2.254", "10.96.0.1", "fd00:96::1", "127.0.0.1", "localhost", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"} {
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: host, Roots: roots}); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "192.0.2.1", Roots: roots}); err == nil {
		t.Error("certificate valid for an address it should not name")
	}
}

func TestClientCertNamesUserAndGroups(t *testing.T) {
	ca, err := loadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.ClientCert("system:node:n1", []string{"system:nodes"})
	if err != nil {
		t.Fatal(err)
	}
	c := parseCert(t, certPEM)
	if c.Subject.CommonName != "system:node:n1" || !slices.Equal(c.Subject.Organization, []string{"system:nodes"}) {
		t.Errorf("subject %v", c.Subject)
	}
	if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || c.IsCA {
		t.Errorf("usage %v, CA %v: want a client certificate", c.ExtKeyUsage, c.IsCA)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert())
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Error(err)
	}
}

// A second start on the same data dir keeps the CA and the signing key:
// kubeconfigs and tokens issued before stay valid.
func TestCAAndSigningKeySurviveARestart(t *testing.T) {
	dir := t.TempDir()
	ca1, err := loadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	k1, _, err := loadOrCreateSAKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	sa1, _ := os.ReadFile(k1)
	ca2, err := loadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	k2, p2, err := loadOrCreateSAKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	sa2, _ := os.ReadFile(k2)
	if !bytes.Equal(ca1.CertPEM(), ca2.CertPEM()) || !bytes.Equal(sa1, sa2) {
		t.Error("a second start made a new CA or signing key")
	}
	for _, f := range []string{"ca.key", "sa.key"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, want mode 0600", f, err)
		}
	}
	pub, _ := os.ReadFile(p2)
	if b, _ := pem.Decode(pub); b == nil || b.Type != "PUBLIC KEY" {
		t.Errorf("sa.pub is not a PEM public key")
	}
}

func TestConfigRejectsWhatTheServersWould(t *testing.T) {
	bin := t.TempDir()
	for _, b := range []string{APIServerBinary, ControllerManagerBinary} {
		if err := os.WriteFile(filepath.Join(bin, b), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := netip.MustParsePrefix
	for name, cfg := range map[string]Config{
		"two IPv4 cluster CIDRs": {ClusterCIDRs: []netip.Prefix{p("10.1.0.0/16"), p("10.2.0.0/16")}},
		"mask wider than CIDR":   {ClusterCIDRs: []netip.Prefix{p("10.1.0.0/16")}, NodeCIDRMaskSizeIPv4: 12},
		"IPv6 mask too long":     {ClusterCIDRs: []netip.Prefix{p("fd00::/56")}, NodeCIDRMaskSizeIPv6: 129},
		"no etcd":                {EtcdServers: []string{}},
	} {
		cfg.BinDir, cfg.DataDir = bin, t.TempDir()
		if cfg.EtcdServers == nil {
			cfg.EtcdServers = []string{"http://127.0.0.1:2379"}
		}
		if err := cfg.complete(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	cfg := Config{BinDir: t.TempDir(), DataDir: t.TempDir(), EtcdServers: []string{"http://127.0.0.1:2379"}}
	if err := cfg.complete(); err == nil {
		t.Error("accepted a BinDir without the binaries")
	}
	good := Config{BinDir: bin, DataDir: t.TempDir(), EtcdServers: []string{"http://127.0.0.1:2379"},
		ClusterCIDRs: []netip.Prefix{p("10.244.0.0/16"), p("fd00:10:244::/56")}}
	if err := good.complete(); err != nil {
		t.Errorf("dual stack: %v", err)
	}
}

func TestVersionFollowsClientGo(t *testing.T) {
	v := KubeVersion
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	// What scripts/kube-bins.sh builds: k8s.io/kubernetes v1.X.Y for
	// client-go v0.X.Y.
	want := "k8s.io/client-go v0." + strings.TrimPrefix(v, "v1.")
	if !strings.HasPrefix(v, "v1.") || !strings.Contains(string(gomod), want) {
		t.Errorf("KubeVersion %q, but go.mod does not require %q", v, want)
	}
}
