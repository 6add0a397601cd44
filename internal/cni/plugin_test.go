package cni

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weft-net/weft/internal/readyfile"
	"github.com/weft-net/weft/internal/subnetenv"
)

// wantCNIError checks that err is a CNI error object with code and a
// message containing msg.
func wantCNIError(t *testing.T, err error, code uint, msg string) {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("got %v (%T), want a CNI error with code %d", err, err, code)
	}
	if te.Code != code || !strings.Contains(te.Msg, msg) {
		t.Fatalf("got code %d %q, want code %d containing %q", te.Code, te.Msg, code, msg)
	}
}

func testArgs(conf string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: "c1", Netns: "/var/run/netns/none", IfName: "eth0", StdinData: []byte(conf)}
}

func confIn(dir, extra string) string {
	return `{"cniVersion":"1.1.0","name":"cbr0","type":"flannel","subnetFile":"` + filepath.Join(dir, "subnet.env") +
		`","dataDir":"` + filepath.Join(dir, "data") + `"` + extra + `}`
}

func dataDirEmpty(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "data"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("data dir holds %d files after a failed command", len(ents))
	}
}

func TestAddRefusesWithoutSubnetFile(t *testing.T) {
	dir := t.TempDir()
	p := &Plugin{}
	err := p.Add(testArgs(confIn(dir, "")))
	wantCNIError(t, err, types.ErrTryAgainLater,
		"subnet file "+filepath.Join(dir, "subnet.env")+" not found: is weftd running on this node?")
	dataDirEmpty(t, dir)
}

func TestAddRefusesBadDelegate(t *testing.T) {
	dir := t.TempDir()
	if err := subnetenv.Write(filepath.Join(dir, "subnet.env"), testEnv); err != nil {
		t.Fatal(err)
	}
	p := &Plugin{}
	for _, k := range []string{"name", "ipam"} {
		err := p.Add(testArgs(confIn(dir, `,"delegate":{"`+k+`":{}}`)))
		wantCNIError(t, err, types.ErrInvalidNetworkConfig, `delegate must not set "`+k+`"`)
	}
	dataDirEmpty(t, dir)
}

func TestAddBadSubnetFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "subnet.env"), []byte("FLANNEL_MTU=abc\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := (&Plugin{}).Add(testArgs(confIn(dir, "")))
	wantCNIError(t, err, types.ErrIOFailure, "FLANNEL_MTU")
	dataDirEmpty(t, dir)
}

func TestDelUnknownSucceeds(t *testing.T) {
	dir := t.TempDir()
	// No saved config and no subnet.env: nothing was, or can be, created.
	if err := (&Plugin{}).Del(testArgs(confIn(dir, ""))); err != nil {
		t.Errorf("DEL of an unknown container: %v", err)
	}
}

func TestCheckUnknownContainer(t *testing.T) {
	dir := t.TempDir()
	err := (&Plugin{}).Check(testArgs(confIn(dir, "")))
	wantCNIError(t, err, types.ErrUnknownContainer, "container c1 unknown")
}

// DEL and CHECK read the saved config alike: one that does not parse, or
// cannot be read, is an error naming it, and DEL keeps it; one a crash
// left empty or NUL-filled is none.
func TestDelCheckBadSavedConfig(t *testing.T) {
	dir := t.TempDir()
	saved := filepath.Join(dir, "data", "c1")
	if err := os.MkdirAll(saved, 0o700); err != nil { // a directory: unreadable as a file
		t.Fatal(err)
	}
	p := &Plugin{}
	for name, cmd := range map[string]func(*skel.CmdArgs) error{"DEL": p.Del, "CHECK": p.Check} {
		t.Run(name+" unreadable", func(t *testing.T) {
			wantCNIError(t, cmd(testArgs(confIn(dir, ""))), types.ErrIOFailure, "reading saved delegate config")
		})
	}
	if err := os.Remove(saved); err != nil {
		t.Fatal(err)
	}
	// Empty (ext4) or its length of NULs (XFS) is what a crash can leave,
	// the config being saved unsynced: CHECK says the container is
	// unknown, DEL does without it.
	for name, remnant := range map[string][]byte{"empty": nil, "NUL-filled": make([]byte, 412)} {
		if err := os.WriteFile(saved, remnant, 0o600); err != nil {
			t.Fatal(err)
		}
		wantCNIError(t, p.Check(testArgs(confIn(dir, ""))), types.ErrUnknownContainer, "no saved delegate config")
		if err := p.Del(testArgs(confIn(dir, ""))); err != nil {
			t.Errorf("DEL with an %s saved config: %v", name, err)
		}
		if _, err := os.Stat(saved); !os.IsNotExist(err) {
			t.Errorf("%s saved config still there after DEL: %v", name, err)
		}
	}
	if err := os.WriteFile(saved, []byte(`{"mtu":1400}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, cmd := range map[string]func(*skel.CmdArgs) error{"DEL": p.Del, "CHECK": p.Check} {
		t.Run(name+" without type", func(t *testing.T) {
			wantCNIError(t, cmd(testArgs(confIn(dir, ""))), types.ErrDecodingFailure, "saved delegate config for c1: delegate config has no type")
			if _, err := os.Stat(saved); err != nil {
				t.Errorf("saved config gone: %v", err)
			}
		})
	}
}

func TestStatus(t *testing.T) {
	dir := t.TempDir()
	p := &Plugin{}
	err := p.Status(testArgs(confIn(dir, "")))
	wantCNIError(t, err, types.ErrPluginNotAvailable, "is weftd running on this node?")

	if err := subnetenv.Write(filepath.Join(dir, "subnet.env"), testEnv); err != nil {
		t.Fatal(err)
	}
	args := testArgs(confIn(dir, ""))
	args.Path = filepath.Join(dir, "bin")
	wantCNIError(t, p.Status(args), types.ErrPluginNotAvailable, `delegate plugin "bridge" is not installed`)
	// STATUS looks the delegates up in CNI_PATH; it does not run them.
	for _, name := range []string{"bridge", "host-local"} {
		if err := os.MkdirAll(args.Path, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(args.Path, name), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Everything is installed, but the agent has not vouched for the node.
	wantCNIError(t, p.Status(args), types.ErrPluginNotAvailable, "weftd is not ready")
	ready := readyfile.Path(filepath.Join(dir, "subnet.env"))
	if err := readyfile.Mark(ready, time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	wantCNIError(t, p.Status(args), types.ErrPluginNotAvailable, "stale")
	if err := readyfile.Mark(ready, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := p.Status(args); err != nil {
		t.Errorf("STATUS with subnet.env and a fresh marker: %v", err)
	}

	if err := os.WriteFile(filepath.Join(dir, "subnet.env"), []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	wantCNIError(t, p.Status(testArgs(confIn(dir, ""))), types.ErrPluginNotAvailable, "subnet")
}

// nodeDirs is a node's directory, with subnet.env, and an empty CNI bin
// dir in it.
func nodeDirs(t *testing.T) (dir, bin string) {
	t.Helper()
	dir = t.TempDir()
	if err := subnetenv.Write(filepath.Join(dir, "subnet.env"), testEnv); err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, bin
}

// A delegate that fails ADD and then its cleanup DEL may have left a veth
// or an address behind: the saved config stays so that the runtime's DEL
// can still undo it after subnet.env is gone.
func TestAddKeepsConfigWhenCleanupFails(t *testing.T) {
	dir, bin := nodeDirs(t)
	failing := "#!/bin/sh\necho '{\"cniVersion\":\"1.1.0\",\"code\":11,\"msg\":\"half done\"}'\nexit 1\n"
	if err := os.WriteFile(filepath.Join(bin, "bridge"), []byte(failing), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "host-local"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CNI_PATH", bin) // where invoke finds the delegate
	args := testArgs(confIn(dir, `,"execDelegate":true`))
	args.Path = bin
	err := (&Plugin{}).Add(args)
	wantCNIError(t, err, 11, "half done")
	if _, err := os.Stat(filepath.Join(dir, "data", "c1")); err != nil {
		t.Errorf("saved config gone after a failed cleanup: %v", err)
	}
}

// ADD needs the delegate's IPAM plugin installed even when the plugin does
// the delegate's work itself: every DEL runs it.
func TestAddNeedsIPAMPlugin(t *testing.T) {
	dir, bin := nodeDirs(t)
	if err := os.WriteFile(filepath.Join(bin, "bridge"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	args := testArgs(confIn(dir, ""))
	args.Path = bin
	wantCNIError(t, (&Plugin{}).Add(args), types.ErrPluginNotAvailable, `"host-local" is not installed`)
	dataDirEmpty(t, dir)
}
