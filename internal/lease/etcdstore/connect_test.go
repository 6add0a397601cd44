package etcdstore

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/weft-net/weft/internal/etcdtest"
)

// pki writes a CA, a server certificate for 127.0.0.1 and a client
// certificate into dir and returns their paths.
type pki struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func newPKI(t *testing.T, dir string) pki {
	t.Helper()
	caKey := genKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "weft test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	p := pki{ca: filepath.Join(dir, "ca.pem")}
	writePEM(t, p.ca, "CERTIFICATE", caDER)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		key := genKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		cert, keyPath := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		writePEM(t, cert, "CERTIFICATE", der)
		writePEM(t, keyPath, "EC PRIVATE KEY", keyDER)
		return cert, keyPath
	}
	p.serverCert, p.serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = leaf("client", 3, x509.ExtKeyUsageClientAuth)
	return p
}

func genKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func loopbackURL(t *testing.T, scheme string) url.URL {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return url.URL{Scheme: scheme, Host: l.Addr().String()}
}

// A flannel-style secured etcd: clients must present a certificate signed
// by the CA and verify the server's.
func TestConnectTLS(t *testing.T) {
	p := newPKI(t, t.TempDir())
	cfg := embed.NewConfig()
	cfg.Dir, cfg.Name = t.TempDir(), "tls"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	client, peer := loopbackURL(t, "https"), loopbackURL(t, "http")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = fmt.Sprintf("tls=%s", peer.String())
	cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile = p.serverCert, p.serverKey
	cfg.ClientTLSInfo.TrustedCAFile, cfg.ClientTLSInfo.ClientCertAuth = p.ca, true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd not ready")
	}

	ctx := ctxT(t)
	cli, err := Connect(ctx, ClientOptions{Endpoints: []string{client.String()},
		CertFile: p.clientCert, KeyFile: p.clientKey, CAFile: p.ca})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	put(t, cli, DefaultPrefix+"/config", net16)
	got, err := New(cli, Options{}).NetworkConfig(ctx)
	if err != nil || string(got) != net16 {
		t.Fatalf("NetworkConfig over TLS = %q, %v", got, err)
	}

	// Without a client certificate the server refuses us.
	anon, err := Connect(ctx, ClientOptions{Endpoints: []string{client.String()}, CAFile: p.ca})
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := anon.Get(short, "x"); err == nil {
		t.Fatal("a client without a certificate was served")
	}
}

func TestConnectAuth(t *testing.T) {
	srv := etcdtest.Start(t)
	root := srv.Client(t)
	ctx := ctxT(t)
	if _, err := root.UserAdd(ctx, "root", "rootpw"); err != nil {
		t.Fatal(err)
	}
	if _, err := root.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := root.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	cli, err := Connect(ctx, ClientOptions{Endpoints: []string{srv.Endpoint}, Username: "root", Password: "rootpw"})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	put(t, cli, DefaultPrefix+"/config", net16)

	bad, err := Connect(ctx, ClientOptions{Endpoints: []string{srv.Endpoint}, Username: "root", Password: "wrong"})
	if err == nil {
		defer bad.Close()
		if _, err = bad.Get(ctx, "x"); err == nil {
			t.Fatal("wrong password was accepted")
		}
	}
	if !strings.Contains(err.Error(), "authentication failed") {
		t.Errorf("wrong password: %v", err)
	}
}

func TestConnectRejectsBadOptions(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		o    ClientOptions
		want string
	}{
		{ClientOptions{}, "no endpoints"},
		{ClientOptions{Endpoints: []string{"https://127.0.0.1:1"}, CertFile: "c.pem"}, "both the cert file and the key file"},
		{ClientOptions{Endpoints: []string{"https://127.0.0.1:1"}, CAFile: filepath.Join(dir, "missing.pem")}, "missing.pem"},
	} {
		if cli, err := Connect(ctx, tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			if cli != nil {
				cli.Close()
			}
			t.Errorf("Connect(%+v) = %v, want an error mentioning %q", tc.o, err, tc.want)
		}
	}
}
