package main

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/netlinkx/nstest"
	"github.com/weft-net/weft/internal/subnetenv"
	"github.com/weft-net/weft/internal/syncbuf"
)

// TestBinary runs the built weftd, as a node would, inside a test
// namespace next to a real etcd server (Debian's etcd, at the default
// endpoint inside that namespace): it leases a subnet, writes subnet.env,
// and exits 0 on SIGTERM leaving the datapath in place.
func TestBinary(t *testing.T) {
	nstest.RequireRoot(t)
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("needs the etcd server binary (Debian package etcd-server)")
	}
	dir := t.TempDir()
	bin := buildWeftd(t)
	node, peer := nstest.New(t), nstest.New(t)
	ext, _ := nstest.Veth(t, node, "eth0", netip.MustParsePrefix("192.0.2.10/24"), peer, "eth0", netip.MustParsePrefix("192.0.2.1/24"))
	if err := node.H.RouteReplace(netlinkx.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: netip.MustParseAddr("192.0.2.1"), LinkIndex: ext.Attrs().Index}); err != nil {
		t.Fatal(err)
	}

	start := func(name string, out *syncbuf.Buffer, args ...string) *exec.Cmd {
		cmd := exec.Command("ip", append([]string{"netns", "exec", node.Name, name}, args...)...)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	etcdLog := &syncbuf.Buffer{}
	etcd := start(etcdBin, etcdLog, "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "default=http://127.0.0.1:2380")
	t.Cleanup(func() { etcd.Process.Kill(); etcd.Wait() })

	conf := filepath.Join(dir, "net-conf.json")
	if err := os.WriteFile(conf, []byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	subnetFile := filepath.Join(dir, "subnet.env")
	log := &syncbuf.Buffer{}
	weftd := start(bin, log, "--net-config-file", conf, "--subnet-file", subnetFile, "--log-level", "debug")
	exited := make(chan error, 1)
	go func() { exited <- weftd.Wait() }()
	t.Cleanup(func() {
		weftd.Process.Kill()
		if t.Failed() {
			t.Logf("weftd log:\n%s\netcd log:\n%s", log.String(), etcdLog.String())
		}
	})

	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(log.String(), "programmed 1 leases in") {
		select {
		case err := <-exited:
			t.Fatalf("weftd exited early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("weftd did not program its lease in 20s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	env, err := subnetenv.Read(subnetFile)
	if err != nil || env.MTU != 1450 || env.Network.String() != "10.244.0.0/16" {
		t.Errorf("subnet.env: %+v %v", env, err)
	}

	if err := weftd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if errors.As(err, &ee) || err != nil {
			t.Errorf("weftd exit after SIGTERM: %v, want status 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("weftd did not exit within 10s of SIGTERM")
	}
	if _, err := node.H.LinkByName("flannel.1"); err != nil {
		t.Errorf("flannel.1 gone after exit: %v", err)
	}
}
