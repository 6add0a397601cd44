package kubestore

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lease"
)

func TestNetworkConfigMissingIsNoConfig(t *testing.T) {
	s := &Store{o: Options{NetConfigPath: filepath.Join(t.TempDir(), "net-conf.json")}, log: slog.Default()}
	_, err := s.NetworkConfig(context.Background())
	if !errors.Is(err, lease.ErrNoConfig) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if err := os.WriteFile(s.o.NetConfigPath, []byte(`{"Network":"10.244.0.0/16"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	raw, err := s.NetworkConfig(context.Background())
	if err != nil || string(raw) != `{"Network":"10.244.0.0/16"}` {
		t.Errorf("NetworkConfig = %q, %v", raw, err)
	}
}

// A ConfigMap volume is a directory of symlinks into a ..data symlink that
// kubelet points at a new timestamped directory on each update.
func TestWatchNetworkConfigSeesAConfigMapUpdate(t *testing.T) {
	dir := t.TempDir()
	version := func(name, content string) {
		t.Helper()
		d := filepath.Join(dir, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "net-conf.json"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_01_01_00_00_00.1", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
	if err := os.Symlink("..data/net-conf.json", filepath.Join(dir, "net-conf.json")); err != nil {
		t.Fatal(err)
	}

	s := &Store{o: Options{NetConfigPath: filepath.Join(dir, "net-conf.json")}, log: slog.Default()}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan string, 4)
	errc := make(chan error, 1)
	go func() { errc <- s.WatchNetworkConfig(ctx, func(raw []byte) { got <- string(raw) }) }()
	defer func() {
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Errorf("WatchNetworkConfig returned %v", err)
		}
	}()

	// fsnotify needs its watch in place before the change: retry the
	// update until it is seen, each time with new content.
	deadline := time.After(30 * time.Second)
	for i := 2; ; i++ {
		want := `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"},"v":` + strconv.Itoa(i) + `}`
		version("..2026_01_01_00_00_00."+strconv.Itoa(i), want)
		select {
		case raw := <-got:
			if raw != want {
				t.Fatalf("fn got %q, want %q", raw, want)
			}
			// Touching the directory without changing the content is not a change.
			if err := os.WriteFile(filepath.Join(dir, "unrelated"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			select {
			case raw := <-got:
				t.Errorf("fn called again with unchanged content %q", raw)
			case <-time.After(300 * time.Millisecond):
			}
			return
		case <-time.After(500 * time.Millisecond):
		case <-deadline:
			t.Fatal("the update was never seen")
		}
	}
}
