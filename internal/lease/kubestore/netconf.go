package kubestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/weft-net/weft/internal/lease"
)

// configRecheck is how often WatchNetworkConfig reads the file even
// without a notification (an inotify queue overflow loses them).
const configRecheck = time.Minute

// NetworkConfig implements lease.Store: the net-conf file
// (--net-config-path), read whole on each call as flannel reads it. A
// missing file is lease.ErrNoConfig.
func (s *Store) NetworkConfig(context.Context) ([]byte, error) {
	raw, err := os.ReadFile(s.o.NetConfigPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("net-conf %s: %w (%w)", s.o.NetConfigPath, lease.ErrNoConfig, err)
	}
	if err != nil {
		return nil, fmt.Errorf("net-conf: %w", err)
	}
	return raw, nil
}

// WatchNetworkConfig calls fn with the net-conf file's content each time
// it changes, until ctx ends. It watches the file's directory, so a
// ConfigMap update (kubelet swaps a symlink in the volume) or an atomic
// rename is seen as it happens; it also re-reads the file every minute.
// A file that cannot be read is not a change: fn sees only contents.
func (s *Store) WatchNetworkConfig(ctx context.Context, fn func(raw []byte)) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch net-conf: %w", err)
	}
	defer fw.Close()
	dir := filepath.Dir(s.o.NetConfigPath)
	if err := fw.Add(dir); err != nil {
		return fmt.Errorf("watch net-conf directory %s: %w", dir, err)
	}
	last, _ := os.ReadFile(s.o.NetConfigPath)
	check := func() {
		raw, err := os.ReadFile(s.o.NetConfigPath)
		if err != nil || bytes.Equal(raw, last) {
			return
		}
		last = raw
		s.log.Info("net-conf changed", "path", s.o.NetConfigPath)
		fn(raw)
	}
	t := time.NewTicker(configRecheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-fw.Events:
			check()
		case err := <-fw.Errors:
			s.log.Debug("net-conf watch", "err", err)
			check()
		case <-t.C:
			check()
		}
	}
}
