// Package kubetest gives tests a real Kubernetes control plane (see
// internal/kubecp): kube-apiserver and kube-controller-manager on a
// loopback address of their own, backed by a fresh embedded etcd
// (internal/etcdtest). Only _test.go files import it.
//
// A test that owns its cluster calls Start. Tests of a package that can
// share one (each uses names of its own; starting costs seconds) call
// Shared, with the package's TestMain calling Main:
//
//	func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }
//
// Without the binaries (`make kube-bins`), both skip the test and say how
// to get them.
package kubetest

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/weft-net/weft/internal/etcdtest"
	"github.com/weft-net/weft/internal/kubecp"
)

// Option changes the control plane's config before it starts (cluster
// CIDRs, mask sizes, etcd prefix, ...).
type Option func(*kubecp.Config)

// startTimeout bounds a start on a loaded machine; it takes seconds.
const startTimeout = 3 * time.Minute

// BinDir returns the directory holding the binaries, or skips t saying how
// to build them.
func BinDir(t testing.TB) string {
	t.Helper()
	dir, err := kubecp.DefaultBinDir()
	if err == nil {
		err = kubecp.CheckBinaries(dir)
	}
	if err != nil {
		t.Skipf("needs a Kubernetes control plane: %v", err)
	}
	return dir
}

// Start runs a control plane of t's own, stopped (with its etcd) when t
// ends.
func Start(t testing.TB, opts ...Option) *kubecp.ControlPlane {
	t.Helper()
	bin := BinDir(t)
	etcd := etcdtest.Start(t)
	cfg := config(bin, t.TempDir(), etcd.Endpoint, slog.New(slog.NewTextHandler(tWriter{t}, nil)))
	for _, o := range opts {
		o(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	t0 := time.Now()
	cp, err := kubecp.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kube control plane %s started in %v", cp.URL(), time.Since(t0).Round(time.Millisecond))
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("stop kube control plane: %v", err)
		}
	})
	return cp
}

// shared is the one control plane of a test binary's Shared callers.
var shared struct {
	mu     sync.Mutex
	inMain bool
	done   bool // started, or failed to
	cp     *kubecp.ControlPlane
	etcd   *etcdtest.Server
	dir    string
	err    error
}

// Main runs the tests, then stops the control plane Shared started, if
// any. Call it from TestMain: os.Exit(kubetest.Main(m)).
func Main(m *testing.M) int {
	shared.mu.Lock()
	shared.inMain = true
	shared.mu.Unlock()
	code := m.Run()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.cp != nil {
		if err := shared.cp.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "kubetest: stop shared kube control plane: %v\n", err)
			code = 1
		}
	}
	if shared.etcd != nil {
		shared.etcd.Close()
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	return code
}

// Shared returns the test binary's one control plane, started by its first
// caller with the defaults (cluster CIDR kubecp.DefaultClusterCIDR, /24
// per node). Objects outlive the test that made them: use names of the
// test's own and delete what later tests must not see. TestMain must call
// Main.
func Shared(t testing.TB) *kubecp.ControlPlane {
	t.Helper()
	bin := BinDir(t)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.inMain {
		t.Fatal("kubetest.Shared needs the package's TestMain to call kubetest.Main, which stops the control plane")
	}
	if !shared.done {
		shared.done = true
		t0 := time.Now()
		shared.err = startShared(bin)
		if shared.err == nil {
			t.Logf("shared kube control plane %s started in %v", shared.cp.URL(), time.Since(t0).Round(time.Millisecond))
		}
	}
	if shared.err != nil {
		t.Fatalf("shared kube control plane: %v", shared.err)
	}
	if err := shared.cp.Exited(); err != nil {
		t.Fatalf("shared kube control plane: %v", err)
	}
	return shared.cp
}

func startShared(bin string) error {
	var err error
	if shared.dir, err = os.MkdirTemp("", "weft-kubetest-"); err != nil {
		return err
	}
	if shared.etcd, err = etcdtest.New(shared.dir + "/etcd"); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	shared.cp, err = kubecp.Start(ctx, config(bin, shared.dir+"/kube", shared.etcd.Endpoint, log))
	return err
}

func config(bin, dir, etcd string, log *slog.Logger) kubecp.Config {
	return kubecp.Config{
		BinDir:      bin,
		DataDir:     dir,
		EtcdServers: []string{etcd},
		// An address of its own in 127.0.0.0/8 (all of it is on lo), as
		// etcdtest does: ports other tests take on 127.0.0.1 do not
		// collide with it.
		Address: netip.AddrFrom4([4]byte{127, byte(rand.IntN(256)), byte(rand.IntN(256)), byte(1 + rand.IntN(254))}),
		Command: killedWithTest,
		Logger:  log,
	}
}

// killedWithTest runs the binary so that the kernel kills it when the test
// binary dies, even of a panic or a timeout that skips every cleanup.
func killedWithTest(bin string, args []string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Client is a clientset with full rights on cp.
func Client(t testing.TB, cp *kubecp.ControlPlane) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cp.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// tWriter passes the control plane's log lines to t.Log.
type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
