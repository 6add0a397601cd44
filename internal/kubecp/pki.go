package kubecp

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/weft-net/weft/internal/atomicfile"
)

// Validity of what the PKI issues. The CA outlives any lab; leaf
// certificates are issued again on every Start.
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
	// Certificates start an hour in the past, so a clock a little behind
	// (a namespace shares the host's clock, but a VM may not) accepts them.
	backdate = time.Hour
)

// authority is the cluster CA: it signs the API server's serving
// certificate and the client certificates the API server trusts.
type authority struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
}

// loadOrCreateCA reads ca.crt and ca.key from dir, or creates them: a
// control plane started again on the same data dir (and the same etcd)
// keeps its CA, so kubeconfigs written before still work.
func loadOrCreateCA(dir string) (*authority, error) {
	certPath, keyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	certPEM, err := os.ReadFile(certPath)
	if err == nil {
		keyPEM, err := os.ReadFile(keyPath)
		if err != nil {
			return nil, fmt.Errorf("CA key: %w", err)
		}
		return parseCA(certPEM, keyPEM)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("CA: %w", err)
	}
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "weft-kubecp-ca"},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM, err := keyToPEM(key)
	if err != nil {
		return nil, err
	}
	// The key first: a crash between the two leaves no certificate without
	// its key, which the next start would fail on.
	if err := atomicfile.Write(keyPath, keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(certPath, certPEM, 0o644); err != nil {
		return nil, err
	}
	return parseCA(certPEM, keyPEM)
}

func parseCA(certPEM, keyPEM []byte) (*authority, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("CA certificate: no PEM certificate")
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	return &authority{cert: cert, key: key, certPEM: certPEM}, nil
}

// issue signs a new key pair for tmpl and returns the certificate and key
// as PEM.
func (a *authority) issue(tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl.SerialNumber = serial()
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-backdate), now.Add(leafValidity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, key.Public(), a.key)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate for %q: %w", tmpl.Subject.CommonName, err)
	}
	keyPEM, err = keyToPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// servingCert is the API server's certificate: valid for every address
// clients reach it by, and for the names pods use for the kubernetes
// Service.
func (a *authority) servingCert(ips []netip.Addr, names []string) (certPEM, keyPEM []byte, err error) {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    names,
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.AsSlice()))
	}
	return a.issue(tmpl)
}

// clientCert is a client certificate the API server maps to user and
// groups (CN and O), as kubeadm's admin.conf.
func (a *authority) clientCert(user string, groups []string) (certPEM, keyPEM []byte, err error) {
	return a.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: user, Organization: groups},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// loadOrCreateSAKey makes sure dir holds the service-account signing key
// (sa.key) and its public half (sa.pub), keeping an existing pair so that
// tokens issued before a restart stay valid.
func loadOrCreateSAKey(dir string) (keyPath, pubPath string, err error) {
	keyPath, pubPath = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	_, errKey := os.Stat(keyPath)
	_, errPub := os.Stat(pubPath)
	if errKey == nil && errPub == nil {
		return keyPath, pubPath, nil
	}
	key, err := newKey()
	if err != nil {
		return "", "", err
	}
	keyPEM, err := keyToPEM(key)
	if err != nil {
		return "", "", err
	}
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return "", "", fmt.Errorf("service-account public key: %w", err)
	}
	if err := atomicfile.Write(keyPath, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	if err := atomicfile.Write(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	return keyPath, pubPath, nil
}

// newKey makes an ECDSA P-256 key: every Kubernetes component takes it
// (service-account tokens are then ES256), and it costs microseconds where
// RSA costs a noticeable part of a test's start.
func newKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return key, nil
}

func keyToPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func parseKey(keyPEM []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(keyPEM)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, errors.New("no PEM PKCS#8 private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key of type %T cannot sign", k)
	}
	return s, nil
}

// serial is a random 128-bit serial number, so that two CAs made by two
// runs never issue certificates a client could confuse.
func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		// crypto/rand does not fail on Linux (it would crash the program
		// first); a fixed serial is still a valid certificate.
		return big.NewInt(1)
	}
	return n
}
