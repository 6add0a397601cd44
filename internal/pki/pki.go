// Package pki is a small certificate authority for what weft runs itself:
// the lab's Kubernetes control plane and its etcd (TLS with client
// certificates). Keys are ECDSA P-256, certificates PEM.
package pki

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
	"time"

	"github.com/weft-net/weft/internal/atomicfile"
)

// Validity of what the CA issues. The CA outlives any lab; leaf
// certificates are issued again on every start.
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
	// Certificates start an hour in the past, so a clock a little behind
	// (a namespace shares the host's clock, but a VM may not) accepts them.
	backdate = time.Hour
)

// CA signs serving and client certificates.
type CA struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
}

// LoadOrCreateCA reads the CA from certPath and keyPath, or creates a new
// one named commonName there: a component started again on the same
// directory keeps its CA, so credentials issued before still work.
func LoadOrCreateCA(certPath, keyPath, commonName string) (*CA, error) {
	certPEM, err := os.ReadFile(certPath)
	if err == nil {
		keyPEM, err := os.ReadFile(keyPath)
		if err != nil {
			return nil, fmt.Errorf("CA key: %w", err)
		}
		return ParseCA(certPEM, keyPEM)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("CA: %w", err)
	}
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: commonName},
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
	keyPEM, err := KeyPEM(key)
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
	return ParseCA(certPEM, keyPEM)
}

// ParseCA reads a CA certificate and its PKCS#8 key from PEM.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("CA certificate: no PEM certificate")
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	return &CA{cert: cert, key: key, certPEM: certPEM}, nil
}

// Cert is the CA's certificate.
func (a *CA) Cert() *x509.Certificate { return a.cert }

// CertPEM is the CA's certificate as PEM.
func (a *CA) CertPEM() []byte { return a.certPEM }

// Issue signs a new key pair for tmpl (its serial, validity, key usage
// and basic constraints are set here) and returns the certificate and key
// as PEM.
func (a *CA) Issue(tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
	key, err := NewKey()
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
	keyPEM, err = KeyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// ServingCert is a server certificate named commonName, valid for every
// address and name clients reach it by.
func (a *CA) ServingCert(commonName string, ips []netip.Addr, names []string) (certPEM, keyPEM []byte, err error) {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: commonName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    names,
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.AsSlice()))
	}
	return a.Issue(tmpl)
}

// PeerCert is a certificate for both ends of a connection (etcd's peer
// traffic: each member dials the others and serves them).
func (a *CA) PeerCert(commonName string, ips []netip.Addr, names []string) (certPEM, keyPEM []byte, err error) {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: commonName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    names,
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.AsSlice()))
	}
	return a.Issue(tmpl)
}

// ClientCert is a client certificate for user (CN) in groups (O), as
// kubeadm's admin.conf and etcd's CN-based authentication read them.
func (a *CA) ClientCert(user string, groups []string) (certPEM, keyPEM []byte, err error) {
	return a.Issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: user, Organization: groups},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// WritePair writes a certificate (0644) and its key (0600), the key first.
func WritePair(certPath, keyPath string, certPEM, keyPEM []byte) error {
	if err := atomicfile.Write(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return atomicfile.Write(certPath, certPEM, 0o644)
}

// NewKey makes an ECDSA P-256 key: every Kubernetes component and etcd
// take it, and it costs microseconds where RSA costs a noticeable part of a
// test's start.
func NewKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return key, nil
}

// KeyPEM is key as a PKCS#8 PEM block.
func KeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKey reads a PKCS#8 PEM private key.
func ParseKey(keyPEM []byte) (crypto.Signer, error) {
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

// CheckCAFile reads a PEM bundle of CA certificates at path: an error if
// it cannot be read, a certificate in it does not parse, or it holds none.
func CheckCAFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	n := 0
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return errors.New("no PEM certificate in it")
	}
	return nil
}
