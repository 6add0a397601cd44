// Package readyfile is the agent's readiness marker on disk, read by the CNI
// plugin's STATUS. It sits beside subnet.env and says until when the agent
// vouches for the node; the agent refreshes it on every full reconcile, so
// a crashed or stopped agent's marker goes stale by itself. A deadline in
// the file, rather than a PID, works across PID namespaces (agent in a pod,
// plugin on the host).
package readyfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/atomicfile"
)

// Name is the marker's file name, in the subnet file's directory.
const Name = "weftd.ready"

const key = "WEFTD_READY_UNTIL="

// Path is the marker that goes with subnetFile.
func Path(subnetFile string) string { return filepath.Join(filepath.Dir(subnetFile), Name) }

// Mark records that the agent is ready until the given time. Atomic.
func Mark(path string, until time.Time) error {
	return atomicfile.Write(path, []byte(key+until.UTC().Format(time.RFC3339)+"\n"), 0o644)
}

// Clear removes the marker; a missing marker is not an error.
func Clear(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("readiness marker: %w", err)
	}
	return nil
}

// Check returns nil if the marker vouches for now, else why not.
func Check(path string, now time.Time) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s not found: weftd is not running or not ready on this node", path)
	}
	if err != nil {
		return err
	}
	v, ok := strings.CutPrefix(strings.TrimSpace(string(data)), key)
	if !ok {
		return fmt.Errorf("%s: want %s<time>, got %q", path, key, data)
	}
	until, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if now.After(until) {
		return fmt.Errorf("%s is stale (valid until %s): weftd stopped or is stuck", path, until.Format(time.RFC3339))
	}
	return nil
}
