package main

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// buildWeftd returns the weftd binary the tests share, built once (see
// cli_test.go).
func buildWeftd(t *testing.T) string {
	t.Helper()
	return weftd.Path(t)
}

// run runs weftd with args and exactly the environment env, and returns
// its output and exit status.
func run(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(buildWeftd(t), args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	case err != nil:
		t.Fatalf("weftd: %v", err)
	}
	return string(out), 0
}

// TestKubeFlannelArgs runs weftd as kube-flannel.yml's container does,
// with a flannel-style environment holding empty values and a bad one: one
// warning for the bad value; then, outside a pod, the Kubernetes store
// cannot open (exit 1, as flanneld exits when its subnet manager fails).
func TestKubeFlannelArgs(t *testing.T) {
	env := []string{
		"POD_NAME=kube-flannel-ds-abcde", "POD_NAMESPACE=kube-flannel",
		"EVENT_QUEUE_DEPTH=5000", "CONT_WHEN_CACHE_NOT_READY=false",
		"FLANNELD_IFACE=", "FLANNELD_PUBLIC_IP=", "FLANNELD_IPTABLES_RESYNC=often",
	}
	out, code := run(t, env, "--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081")
	if code != 1 || !strings.Contains(out, "--kube-subnet-mgr: kubernetes client config: not in a pod (unable to load in-cluster configuration") {
		t.Errorf("exit %d, want 1 and the in-cluster config refused:\n%s", code, out)
	}
	if n := strings.Count(out, "level=WARN"); n != 1 || !strings.Contains(out, `FLANNELD_IPTABLES_RESYNC=\"often\"`) {
		t.Errorf("%d warnings, want one for FLANNELD_IPTABLES_RESYNC:\n%s", n, out)
	}
}

// TestExitCodes: a command line that does not parse exits 2, a value
// weftd cannot run with 1, as flanneld.
func TestExitCodes(t *testing.T) {
	if out, code := run(t, nil, "--no-such-flag"); code != 2 {
		t.Errorf("--no-such-flag: exit %d, want 2:\n%s", code, out)
	}
	out, code := run(t, []string{"FLANNELD_IP_MASQ=perhaps"}, "--subnet-lease-renew-margin=1440")
	if code != 1 || !strings.Contains(out, "--subnet-lease-renew-margin 1440") || !strings.Contains(out, "FLANNELD_IP_MASQ") {
		t.Errorf("--subnet-lease-renew-margin=1440: exit %d, want 1, the error and the warning:\n%s", code, out)
	}
	if out, code := run(t, []string{"FLANNELD_VERSION=true"}, "--version"); code != 0 || strings.TrimSpace(out) == "" {
		t.Errorf("--version: exit %d:\n%s", code, out)
	}
}
