// Package atomicfile replaces files so that a reader sees the old content or
// the new, never a mix: subnet.env read by the CNI plugin while the agent
// writes it, the conflist read by the kubelet, the plugin's saved configs.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write replaces path with data and mode: a temp file in the same
// directory, fsync, rename. The directory is created if missing.
func Write(path string, data []byte, mode os.FileMode) error {
	if err := write(path, data, mode, true); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// WriteUnsynced is Write without the fsync: readers still see the old
// content or the new, but after a crash the file may be the old one, or
// empty. For a caller that copes with that and writes often, where the
// fsync would be most of the cost (the CNI plugin, once per pod).
func WriteUnsynced(path string, data []byte, mode os.FileMode) error {
	if err := write(path, data, mode, false); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func write(path string, data []byte, mode os.FileMode, sync bool) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode) // CreateTemp makes 0600
	}
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
