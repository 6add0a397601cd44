package daemon_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/agentflags"
	"github.com/weft-net/weft/internal/agentopts"
	"github.com/weft-net/weft/internal/daemon"
	"github.com/weft-net/weft/internal/lease/etcdstore"
	"github.com/weft-net/weft/internal/subnetenv"
)

// TestKubeStoreNotYet runs kube-flannel.yml's container arguments through
// the daemon: they parse, and the store they ask for is refused, before
// anything else is touched.
func TestKubeStoreNotYet(t *testing.T) {
	s, err := agentflags.Parse([]string{"--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"}, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = daemon.Run(ctx, daemon.Options{Options: s.Options, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if !errors.Is(err, daemon.ErrKubeStore) || err.Error() != "the Kubernetes store (--kube-subnet-mgr) is not available yet" {
		t.Fatalf("Run = %v", err)
	}
}

// TestDefaultsAgree checks agentopts' defaults against those of the
// packages that name the same things.
func TestDefaultsAgree(t *testing.T) {
	if agentopts.DefaultEtcdPrefix != etcdstore.DefaultPrefix {
		t.Errorf("etcd prefix: agentopts %q, etcdstore %q", agentopts.DefaultEtcdPrefix, etcdstore.DefaultPrefix)
	}
	if agentopts.DefaultSubnetFile != subnetenv.DefaultPath {
		t.Errorf("subnet file: agentopts %q, subnetenv %q", agentopts.DefaultSubnetFile, subnetenv.DefaultPath)
	}
	// The conversion daemon and doctor make compiles only while the two
	// structs have the same fields; check it keeps the values too.
	e := agentopts.Etcd{Endpoints: []string{"https://e:2379"}, CertFile: "c", KeyFile: "k", CAFile: "ca", Username: "u", Password: "p"}
	c := etcdstore.ClientOptions(e)
	if c.Endpoints[0] != "https://e:2379" || c.CertFile != "c" || c.KeyFile != "k" || c.CAFile != "ca" || c.Username != "u" || c.Password != "p" {
		t.Errorf("ClientOptions(%+v) = %+v", e, c)
	}
}
