package cni

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/weft-net/weft/internal/atomicfile"
)

// The saved delegate config lives at <dataDir>/<containerID>, as flannel
// keeps it, so that DEL works after subnet.env is gone and so that an upgrade
// from flannel (or a downgrade) finds the files where it expects them.

func savedPath(dataDir, containerID string) (string, error) {
	// The container ID becomes a file name: refuse anything that would
	// escape dataDir.
	if containerID == "" || containerID == "." || containerID == ".." ||
		strings.ContainsAny(containerID, "/\x00") {
		return "", fmt.Errorf("container ID %q cannot name a file", containerID)
	}
	return filepath.Join(dataDir, containerID), nil
}

// saveDelegate writes the rendered delegate config atomically, mode 0600,
// without an fsync: a millisecond of every ADD, and far more when pods
// start together. A config a crash leaves empty or NUL-filled is read as
// none (savedDelegate), and DEL works without one, as flannel's writes
// (which are neither atomic nor synced) have it.
func saveDelegate(dataDir, containerID string, conf []byte) error {
	path, err := savedPath(dataDir, containerID)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("save delegate config: %w", err)
	}
	if err := atomicfile.WriteUnsynced(path, conf, 0o600); err != nil {
		return fmt.Errorf("save delegate config: %w", err)
	}
	return nil
}

// loadDelegate returns the saved config; an error satisfying
// errors.Is(err, fs.ErrNotExist) when there is none.
func loadDelegate(dataDir, containerID string) ([]byte, error) {
	path, err := savedPath(dataDir, containerID)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(path)
}

// removeDelegate deletes the saved config; a missing file is not an error.
func removeDelegate(dataDir, containerID string) error {
	path, err := savedPath(dataDir, containerID)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove delegate config: %w", err)
	}
	return nil
}
