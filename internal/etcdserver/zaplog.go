package etcdserver

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// slogCore hands etcd's zap records at warn and above to slog, so the
// member logs in weft's format and stays quiet unless something is wrong.
type slogCore struct {
	log     *slog.Logger
	fields  []zapcore.Field
	closing *atomic.Bool // set while we stop the member
}

func newZapLogger(log *slog.Logger, closing *atomic.Bool) *zap.Logger {
	return zap.New(&slogCore{log: log.With("component", "etcd"), closing: closing})
}

func (c *slogCore) Enabled(l zapcore.Level) bool { return l >= zapcore.WarnLevel }

func (c *slogCore) With(fs []zapcore.Field) zapcore.Core {
	cp := *c
	cp.fields = append(slices.Clip(c.fields), fs...)
	return &cp
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fs {
		f.AddTo(enc)
	}
	if c.noise(e.Message, enc.Fields) {
		return nil
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		if k != "stacktrace" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	attrs := make([]any, 0, len(keys))
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	level := slog.LevelWarn
	if e.Level >= zapcore.ErrorLevel {
		level = slog.LevelError
	}
	c.log.Log(context.Background(), level, e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }

// noise is what etcd reports on every start or clean stop and that no one
// can act on: a single-port client listener (the only kind weft sets up),
// the token type of auth (which weft leaves off), and listeners closing
// because we stopped the member.
func (c *slogCore) noise(msg string, fields map[string]any) bool {
	if strings.HasPrefix(msg, "Running http and grpc server on single port") ||
		strings.HasPrefix(msg, "simple token is not cryptographically signed") {
		return true
	}
	if !c.closing.Load() {
		return false
	}
	err := fmt.Sprint(fields["error"])
	for _, s := range []string{"use of closed network connection", "server has been stopped", "Server closed", "server closed"} {
		if strings.Contains(err, s) {
			return true
		}
	}
	return false
}
