package daemon_test

import (
	"strings"

	"context"
	"errors"
	"io"
	"k8s.io/client-go/rest"
	"log/slog"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/agentflags"
	"github.com/weft-net/weft/internal/agentopts"
	"github.com/weft-net/weft/internal/daemon"
	"github.com/weft-net/weft/internal/lease/etcdstore"
	"github.com/weft-net/weft/internal/subnetenv"
)

// TestKubeStoreOutsideACluster runs kube-flannel.yml's container arguments
// through the daemon outside a pod: they parse, and with no kubeconfig and
// no in-cluster service account the Kubernetes store cannot open, before
// anything else is touched (flanneld exits 1 the same way).
func TestKubeStoreOutsideACluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	s, err := agentflags.Parse([]string{"--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"}, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = daemon.Run(ctx, daemon.Options{Options: s.Options, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "--kube-subnet-mgr: kubernetes client config") || !errors.Is(err, rest.ErrNotInCluster) {
		t.Fatalf("Run = %v, want the in-cluster config refused", err)
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
