package kubecp

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/weft-net/weft/internal/atomicfile"
	"github.com/weft-net/weft/internal/pki"
)

// loadOrCreateCA reads ca.crt and ca.key from dir, or creates them: a
// control plane started again on the same data dir (and the same etcd)
// keeps its CA, so kubeconfigs written before still work.
func loadOrCreateCA(dir string) (*pki.CA, error) {
	return pki.LoadOrCreateCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"), "weft-kubecp-ca")
}

// servingCert is the API server's certificate: valid for every address
// clients reach it by, and for the names pods use for the kubernetes
// Service.
func servingCert(ca *pki.CA, ips []netip.Addr, names []string) (certPEM, keyPEM []byte, err error) {
	return ca.ServingCert("kube-apiserver", ips, names)
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
	key, err := pki.NewKey()
	if err != nil {
		return "", "", err
	}
	keyPEM, err := pki.KeyPEM(key)
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
