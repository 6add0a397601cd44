package etcdstore

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/etcdserver"
	"github.com/weft-net/weft/internal/etcdtest"
)

// secureEtcd runs `weft etcd`'s server as a secured cluster is run: TLS,
// client certificates required, and etcd's authentication with a root
// user and a user "weft" allowed the network prefix only.
func secureEtcd(t *testing.T) (endpoint string, p etcdtest.PKI) {
	t.Helper()
	client, peer := etcdtest.FreeURL(t), etcdtest.FreeURL(t)
	p = etcdtest.NewPKI(t, t.TempDir(), etcdtest.Addr(t, client))
	endpoint = "https://" + strings.TrimPrefix(client, "http://")
	s, err := etcdserver.Start(etcdserver.Config{
		Name: "secure", DataDir: t.TempDir(),
		ListenClientURLs: []string{endpoint}, ListenPeerURLs: []string{peer},
		ClientTLS: etcdserver.TLS{CertFile: p.ServerCert, KeyFile: p.ServerKey, TrustedCAFile: p.CA, ClientCertAuth: true},
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	admin := s.Client()
	defer admin.Close()
	ctx := ctxT(t)
	steps := []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "weft"); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, "weft", DefaultPrefix+"/", clientv3.GetPrefixRangeEnd(DefaultPrefix+"/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := admin.UserAdd(ctx, "weft", "weftpw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "weft", "weft"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	return endpoint, p
}

// The agent's settings against a secured etcd: the right ones work, and
// each wrong one is refused at once, naming the file or user at fault.
func TestConnectSecured(t *testing.T) {
	endpoint, p := secureEtcd(t)
	ctx := ctxT(t)
	good := ClientOptions{Endpoints: []string{endpoint}, CertFile: p.ClientCert, KeyFile: p.ClientKey, CAFile: p.CA,
		Username: "weft", Password: "weftpw"}
	cli, err := Connect(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	put(t, cli, DefaultPrefix+"/config", net16)
	got, err := New(cli, Options{}).NetworkConfig(ctx)
	if err != nil || string(got) != net16 {
		t.Fatalf("NetworkConfig = %q, %v", got, err)
	}
	// The role stops at the prefix.
	if _, err := cli.Put(ctx, "/elsewhere", "x"); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("put outside the prefix: %v", err)
	}

	for _, tc := range []struct {
		name string
		mod  func(*ClientOptions)
		want []string
	}{
		{"wrong CA", func(o *ClientOptions) { o.CAFile = p.OtherCA },
			[]string{"not signed by the CA in --etcd-cafile " + p.OtherCA, endpoint}},
		{"no CA", func(o *ClientOptions) { o.CAFile = "" },
			[]string{"not signed by a CA this system trusts", "--etcd-cafile"}},
		{"wrong key", func(o *ClientOptions) { o.KeyFile = p.OtherKey },
			[]string{"--etcd-keyfile " + p.OtherKey, "private key does not match public key"}},
		{"certificate of another CA", func(o *ClientOptions) { o.CertFile, o.KeyFile = p.OtherClientCert, p.OtherClientKey },
			[]string{"refused the client certificate --etcd-certfile " + p.OtherClientCert}},
		{"no certificate", func(o *ClientOptions) { o.CertFile, o.KeyFile = "", "" },
			[]string{"wants a client certificate"}},
		{"wrong password", func(o *ClientOptions) { o.Password = "nope" },
			[]string{`user "weft": authentication failed`, "--etcd-password"}},
		{"unknown user", func(o *ClientOptions) { o.Username = "flannel" },
			[]string{`user "flannel": authentication failed`}},
		{"http to https", func(o *ClientOptions) {
			o.Endpoints = []string{"http://" + strings.TrimPrefix(endpoint, "https://")}
			o.Username, o.Password = "weft", "weftpw"
			o.CertFile, o.KeyFile, o.CAFile = "", "", ""
		}, []string{"authenticating user \"weft\""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := good
			tc.mod(&o)
			begin := time.Now()
			cli, err := Connect(ctx, o)
			if err == nil {
				cli.Close()
				t.Fatal("Connect succeeded")
			}
			t.Logf("refused: %v", err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			if d := time.Since(begin); d > 8*time.Second {
				t.Errorf("took %v to refuse", d)
			}
		})
	}
}

// An https endpoint that does not answer is no error: the agent may start
// before etcd.
func TestConnectTLSEndpointDown(t *testing.T) {
	p := etcdtest.NewPKI(t, t.TempDir())
	down := "https://" + strings.TrimPrefix(etcdtest.FreeURL(t), "http://")
	begin := time.Now()
	cli, err := Connect(ctxT(t), ClientOptions{Endpoints: []string{down}, CertFile: p.ClientCert, KeyFile: p.ClientKey, CAFile: p.CA})
	if err != nil {
		t.Fatal(err)
	}
	cli.Close()
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("took %v", d)
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

// After an outage of several seconds the client uses the server again
// within a second of its return, not after gRPC's growing backoff.
func TestConnectReconnectsQuickly(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := ctxT(t)
	cli, err := Connect(ctx, ClientOptions{Endpoints: []string{srv.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Get(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	// gRPC's default backoff would have grown past 4 s by now.
	time.Sleep(8 * time.Second)
	srv.Restart(t)
	back := time.Now()
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := cli.Get(short, "k"); err != nil {
		t.Fatalf("get %v after the server came back: %v", time.Since(back), err)
	}
	t.Logf("served again %v after the server came back", time.Since(back).Round(time.Millisecond))
}
