package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"net/netip"
	"path/filepath"
	"testing"
)

func TestPeerCertServesAndDials(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.PeerCert("m1", []netip.Addr{netip.MustParseAddr("192.0.2.254")}, []string{"m1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseKey(keyPEM); err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert())
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: "192.0.2.254", Roots: roots, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			t.Errorf("usage %v: %v", u, err)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "192.0.2.1", Roots: roots}); err == nil {
		t.Error("valid for an address it does not name")
	}

	again, err := LoadOrCreateCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"), "test CA")
	if err != nil || !bytes.Equal(again.CertPEM(), ca.CertPEM()) {
		t.Fatalf("CA not kept on a second load: %v", err)
	}
}
