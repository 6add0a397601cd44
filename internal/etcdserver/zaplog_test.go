package etcdserver

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"
)

func TestZapLogKeepsProblemsOnly(t *testing.T) {
	var buf bytes.Buffer
	closing := new(atomic.Bool)
	zl := newZapLogger(slog.New(slog.NewTextHandler(&buf, nil)), closing).With(zap.String("member", "m1"))

	zl.Info("starting an etcd server")
	zl.Warn("Running http and grpc server on single port. This is not recommended for production.")
	zl.Error("setting up serving failed", zap.Error(errors.New("accept tcp: use of closed network connection")))
	zl.Warn("slow fdatasync", zap.Duration("took", 2e9))
	closing.Store(true)
	zl.Error("setting up serving failed", zap.Error(errors.New("accept tcp: use of closed network connection")))
	zl.Error("failed to save snapshot", zap.Error(errors.New("no space left on device")))

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{
		`level=ERROR msg="setting up serving failed" component=etcd error="accept tcp: use of closed network connection" member=m1`,
		`level=WARN msg="slow fdatasync" component=etcd member=m1 took=2s`,
		`level=ERROR msg="failed to save snapshot" component=etcd error="no space left on device" member=m1`,
	}
	if len(lines) != len(want) {
		t.Fatalf("logged:\n%s\nwant %d lines", buf.String(), len(want))
	}
	for i, w := range want {
		if !strings.HasSuffix(lines[i], w) {
			t.Errorf("line %d = %s\nwant suffix %s", i, lines[i], w)
		}
	}
}
