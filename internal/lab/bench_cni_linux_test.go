package lab

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab/labtest"
)

// The `make bench` CNI measurement, small: it must run clean, give sane
// figures and leave nothing behind. (make bench runs 100 pods.)
func TestBenchCNIAdd(t *testing.T) {
	labtest.RequireRoot(t)
	bin, cni := labtest.Binaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	root := t.TempDir()
	r, err := BenchCNIAdd(ctx, Options{Root: root, BinDir: bin, CNIBinDir: cni}, 20)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", r)
	if r.Pods != 20 || r.Median <= 0 || r.P99 < r.Median || r.Max < r.P99 || r.PluginSize < 1<<20 {
		t.Errorf("implausible result %+v", r)
	}
	l := &Lab{State: State{Name: r.Lab}}
	if left := l.Leftovers(); len(left) != 0 {
		t.Errorf("namespaces left: %v", left)
	}
	if ents, err := os.ReadDir(root); err != nil || len(ents) != 0 {
		t.Errorf("lab root not empty after the bench: %v %v", ents, err)
	}
}
