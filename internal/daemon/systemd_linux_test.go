package daemon

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/agentopts"
	"github.com/weft-net/weft/internal/etcdtest"
	"github.com/weft-net/weft/internal/netif"
	"github.com/weft-net/weft/internal/netlinkx/nstest"
)

// TestDaemonNotifiesSystemd runs weftd in-process as systemd runs a
// Type=notify unit with WatchdogSec: NOTIFY_SOCKET names a socket the test
// listens on. READY=1 comes only once subnet.env is written and the
// datapath is programmed; until then the status says why not; the
// watchdog is petted all along; STOPPING=1 at the end.
func TestDaemonNotifiesSystemd(t *testing.T) {
	nstest.RequireRoot(t)
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	hostNS, peerNS := nstest.New(t), nstest.New(t)
	nstest.Veth(t, hostNS, "ext0", netip.MustParsePrefix("192.0.2.10/24"), peerNS, "p0", netip.MustParsePrefix("192.0.2.1/24"))
	subnetFile := filepath.Join(t.TempDir(), "subnet.env")
	subnetEnvExists := func() bool { _, err := os.Stat(subnetFile); return err == nil }
	sock, nl := listenNotify(t, subnetEnvExists)
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	n := newNode(t, hostNS, agentopts.Options{
		Etcd:         agentopts.Etcd{Endpoints: []string{etcd.Endpoint}},
		EtcdPrefix:   prefix,
		Iface:        netif.Spec{Ifaces: []string{"ext0"}},
		SubnetFile:   subnetFile,
		ResyncPeriod: time.Second,
		ConfigRetry:  50 * time.Millisecond,
	})
	logs := n.logs
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("weftd log:\n%s\nnotifications: %+v", logs.String(), nl.all())
		}
	})
	n.start()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			n.stop()
		}
	})

	// No config yet: not ready, and systemd is told why.
	waitFor(t, "a status naming the missing config", 10*time.Second, func() bool {
		for _, m := range nl.all() {
			if strings.HasPrefix(m.msg, "STATUS=not ready: waiting for a valid network config") {
				return true
			}
		}
		return false
	})
	waitFor(t, "watchdog pets while waiting", 10*time.Second, func() bool { return nl.count("WATCHDOG=1") >= 3 })
	for _, m := range nl.all() {
		if strings.Contains(m.msg, "READY=1") {
			t.Fatalf("READY=1 without a network config: %q", m.msg)
		}
	}
	if subnetEnvExists() {
		t.Fatal("subnet.env written without a network config")
	}

	if _, err := cli.Put(context.Background(), prefix+"/config", goodConf); err != nil {
		t.Fatal(err)
	}
	var ready notifyMsg
	waitFor(t, "READY=1", 20*time.Second, func() bool {
		for _, m := range nl.all() {
			if strings.HasPrefix(m.msg, "READY=1\n") {
				ready = m
				return true
			}
		}
		return false
	})
	if !ready.checked {
		t.Errorf("READY=1 arrived before subnet.env existed")
	}
	if !strings.Contains(ready.msg, "\nSTATUS=ready: subnet 10.244.") {
		t.Errorf("READY=1 without the ready status: %q", ready.msg)
	}
	if !strings.Contains(logs.String(), "programmed 1 leases in") {
		t.Errorf("READY=1 before the datapath was programmed")
	}
	pets := nl.count("WATCHDOG=1")
	waitFor(t, "watchdog pets once ready", 10*time.Second, func() bool { return nl.count("WATCHDOG=1") >= pets+3 })

	stopped = true
	if err := n.stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "STOPPING=1", 5*time.Second, func() bool {
		for _, m := range nl.all() {
			if strings.HasPrefix(m.msg, "STOPPING=1\n") {
				return true
			}
		}
		return false
	})
	readies := 0
	for _, m := range nl.all() {
		if strings.Contains(m.msg, "READY=1") {
			readies++
		}
	}
	if readies != 1 {
		t.Errorf("READY=1 sent %d times, want once", readies)
	}
}
