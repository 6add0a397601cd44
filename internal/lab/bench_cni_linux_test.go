package lab

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab/labtest"
)

// The `make bench` CNI measurement, small: it must run clean, give sane
// figures, split the time of an ADD and leave nothing behind. (make bench
// runs 100 pods.)
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
	if r.Batch != cniBatch || r.BatchPods != 20 || r.BatchMedian <= 0 || r.BatchP99 < r.BatchMedian || r.BatchMax < r.BatchP99 {
		t.Errorf("implausible batch result %+v", r)
	}
	// Every part is measured, and the parts of weft-cni's exec fit in it.
	split, batched := map[string]time.Duration{}, map[string]time.Duration{}
	for _, s := range r.Split {
		if s.Median <= 0 {
			t.Errorf("step %q: %v", s.Name, s.Median)
		}
		split[s.Name], batched[s.Name] = s.Median, s.BatchMedian
	}
	// The steps of an ADD are split for the batches too; those timed
	// alone are not.
	for name, d := range batched {
		if alone := strings.HasSuffix(name, " alone") || strings.HasPrefix(name, "exec of a no-op"); alone != (d == 0) {
			t.Errorf("step %q: %v at once", name, d)
		}
	}
	if batched["weft-cni host-local"] >= batched["exec flannel (weft-cni)"] || batched["exec flannel (weft-cni)"] >= r.BatchMax {
		t.Errorf("batched parts larger than the whole: %+v, max %v", r.Split, r.BatchMax)
	}
	if r.ExecPods != cniExecPods || r.ExecMedian <= 0 || r.ExecP99 < r.ExecMedian {
		t.Errorf("implausible result with the bridge binary %+v", r)
	}
	// The delegate runs in process, step by step.
	for _, name := range []string{"exec flannel (weft-cni)", "weft-cni veth", "weft-cni host-local", "weft-cni save config",
		"weft-cni process start, exit", "exec portmap", "host-local binary ADD alone", "exec of a no-op Go plugin"} {
		if _, ok := split[name]; !ok {
			t.Errorf("no step %q in %+v", name, r.Split)
		}
	}
	if _, ok := split["weft-cni delegate bridge"]; ok {
		t.Errorf("the bridge binary ran for the default delegate: %+v", r.Split)
	}
	if split["weft-cni host-local"] >= split["exec flannel (weft-cni)"] || split["exec portmap"] >= r.Median {
		t.Errorf("parts larger than the whole: %+v, median %v", r.Split, r.Median)
	}
	l := &Lab{State: State{Name: r.Lab}}
	if left := l.Leftovers(); len(left) != 0 {
		t.Errorf("namespaces left: %v", left)
	}
	if ents, err := os.ReadDir(root); err != nil || len(ents) != 0 {
		t.Errorf("lab root not empty after the bench: %v %v", ents, err)
	}
}
