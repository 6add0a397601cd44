package etcdtest

import (
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/weft-net/weft/internal/pki"
)

// PKI are the files of a TLS etcd for tests: a CA, a certificate for the
// server (also usable as a peer certificate) valid for 127.0.0.0/8's
// addresses in use and localhost, a client certificate, and a second CA
// that signed neither.
type PKI struct {
	CA, OtherCA           string
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	// OtherKey is a valid key that is not ClientCert's.
	OtherKey string
	// A client certificate OtherCA signed.
	OtherClientCert, OtherClientKey string
}

// NewPKI writes a PKI into dir, with the server certificate valid for ips.
func NewPKI(t testing.TB, dir string, ips ...netip.Addr) PKI {
	t.Helper()
	p := PKI{
		CA: filepath.Join(dir, "ca.crt"), OtherCA: filepath.Join(dir, "other-ca.crt"),
		ServerCert: filepath.Join(dir, "server.crt"), ServerKey: filepath.Join(dir, "server.key"),
		ClientCert: filepath.Join(dir, "client.crt"), ClientKey: filepath.Join(dir, "client.key"),
		OtherKey:        filepath.Join(dir, "other.key"),
		OtherClientCert: filepath.Join(dir, "other-client.crt"), OtherClientKey: filepath.Join(dir, "other-client.key"),
	}
	ca, err := pki.LoadOrCreateCA(p.CA, filepath.Join(dir, "ca.key"), "etcdtest CA")
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.LoadOrCreateCA(p.OtherCA, filepath.Join(dir, "other-ca.key"), "etcdtest other CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := other.ClientCert("weft", nil)
	if err == nil {
		err = pki.WritePair(p.OtherClientCert, p.OtherClientKey, cert, key)
	}
	if err != nil {
		t.Fatal(err)
	}
	ips = append(ips, netip.MustParseAddr("127.0.0.1"))
	cert, key, err = ca.PeerCert("etcdtest", ips, []string{"localhost"})
	if err == nil {
		err = pki.WritePair(p.ServerCert, p.ServerKey, cert, key)
	}
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err = ca.ClientCert("weft", nil)
	if err == nil {
		err = pki.WritePair(p.ClientCert, p.ClientKey, cert, key)
	}
	if err != nil {
		t.Fatal(err)
	}
	_, key, err = ca.ClientCert("other", nil)
	if err == nil {
		err = pki.WritePair(filepath.Join(dir, "other.crt"), p.OtherKey, nil, key)
	}
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Addr is the address of an http://host:port URL FreeURL returned.
func Addr(t testing.TB, rawURL string) netip.Addr {
	t.Helper()
	ap, err := netip.ParseAddrPort(rawURL[len("http://"):])
	if err != nil {
		t.Fatalf("%s: %v", rawURL, err)
	}
	return ap.Addr()
}
