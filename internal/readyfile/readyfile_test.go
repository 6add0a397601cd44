package readyfile

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMarkCheckClear(t *testing.T) {
	path := Path(filepath.Join(t.TempDir(), "subnet.env"))
	now := time.Date(2026, 11, 24, 1, 0, 0, 0, time.UTC)
	if err := Check(path, now); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Fatalf("missing marker: got %v", err)
	}
	if err := Mark(path, now.Add(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := Check(path, now); err != nil {
		t.Fatalf("fresh marker: %v", err)
	}
	if err := Check(path, now.Add(time.Minute)); err == nil || !strings.Contains(err.Error(), "stale") {
		t.Fatalf("stale marker: got %v", err)
	}
	if err := Clear(path); err != nil {
		t.Fatal(err)
	}
	if err := Clear(path); err != nil {
		t.Fatalf("second Clear: %v", err)
	}
	if err := Check(path, now); err == nil {
		t.Fatal("cleared marker still vouches")
	}
}
