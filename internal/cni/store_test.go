package cni

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestSavedDelegate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "flannel")
	if err := saveDelegate(dir, "abc123", []byte(`{"type":"bridge"}`)); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, "abc123"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("saved config mode %v, want 0600", st.Mode().Perm())
	}
	if b, err := loadDelegate(dir, "abc123"); err != nil || string(b) != `{"type":"bridge"}` {
		t.Errorf("load: %q %v", b, err)
	}
	if err := removeDelegate(dir, "abc123"); err != nil {
		t.Fatal(err)
	}
	if _, err := loadDelegate(dir, "abc123"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after remove: %v", err)
	}
	if err := removeDelegate(dir, "abc123"); err != nil {
		t.Errorf("second remove: %v", err)
	}
	for _, bad := range []string{"", ".", "..", "../x", "a/b"} {
		if err := saveDelegate(dir, bad, []byte("{}")); err == nil {
			t.Errorf("container ID %q accepted as a file name", bad)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("%d files left in the data dir", len(ents))
	}
}
