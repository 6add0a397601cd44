package daemon

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/syncbuf"
)

// recorder collects what a systemd would have been sent.
type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) notify(state string) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, state)
	return true, nil
}

func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

func (r *recorder) count(msg string) int {
	n := 0
	for _, m := range r.all() {
		if m == msg {
			n++
		}
	}
	return n
}

func TestSystemdMessages(t *testing.T) {
	rec := &recorder{}
	s := &systemd{log: slog.New(slog.DiscardHandler), notify: rec.notify}
	s.status("not ready: listing leases")
	s.status("not ready: listing leases") // unchanged: not sent again
	s.status("not ready: acquiring a lease:\nstore unreachable")
	s.ready("ready: subnet 10.244.1.0/24, 1 leases")
	s.ready("ready: subnet 10.244.1.0/24, 1 leases")
	s.status("ready: subnet 10.244.1.0/24, 1 leases")
	s.status("not ready: lease lost")
	s.ready("ready: subnet 10.244.1.0/24, 3 leases") // READY=1 only once
	s.stopping()
	want := []string{
		"STATUS=not ready: listing leases",
		"STATUS=not ready: acquiring a lease: store unreachable",
		"READY=1\nSTATUS=ready: subnet 10.244.1.0/24, 1 leases",
		"STATUS=not ready: lease lost",
		"STATUS=ready: subnet 10.244.1.0/24, 3 leases",
		"STOPPING=1\nSTATUS=stopping; the datapath stays in place",
	}
	if got := rec.all(); !slices.Equal(got, want) {
		t.Errorf("sent\n%q\nwant\n%q", got, want)
	}
}

// A loop that stops turning stops the pets; one that turns again gets them
// back.
func TestWatchdogFollowsTheLoop(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	h := newHealth(time.Minute)
	h.now = func() time.Time { return time.Unix(0, now.Load()) }
	h.alive()
	rec := &recorder{}
	logs := &syncbuf.Buffer{}
	s := &systemd{log: slog.New(slog.NewTextHandler(logs, nil)), notify: rec.notify}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.watchdog(ctx, 5*time.Millisecond, func() bool { ok, _ := h.live(); return ok })
	}()
	defer func() { cancel(); <-done }()

	waitFor(t, "pets while the loop turns", 5*time.Second, func() bool { return rec.count("WATCHDOG=1") >= 3 })
	now.Add(int64(2 * time.Minute)) // the loop has not beaten for 2m
	waitFor(t, "the stuck loop logged", 5*time.Second, func() bool { return len(logs.String()) > 0 })
	stopped := rec.count("WATCHDOG=1")
	time.Sleep(100 * time.Millisecond)
	if n := rec.count("WATCHDOG=1"); n != stopped {
		t.Errorf("%d pets after the loop stuck", n-stopped)
	}
	h.alive()
	waitFor(t, "pets again once the loop turns", 5*time.Second, func() bool { return rec.count("WATCHDOG=1") > stopped })
}

// listenNotify is a service manager's notify socket: it returns the path
// for NOTIFY_SOCKET and every datagram received, with what check says at
// the moment each arrived.
func listenNotify(t *testing.T, check func() bool) (string, *notifyLog) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	nl := &notifyLog{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			nl.add(string(buf[:n]), check())
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return path, nl
}

type notifyMsg struct {
	msg     string
	checked bool
}

type notifyLog struct {
	mu   sync.Mutex
	msgs []notifyMsg
}

func (l *notifyLog) add(msg string, checked bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, notifyMsg{msg, checked})
}

func (l *notifyLog) all() []notifyMsg {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.msgs)
}

func (l *notifyLog) count(msg string) int {
	n := 0
	for _, m := range l.all() {
		if m.msg == msg {
			n++
		}
	}
	return n
}

// The environment systemd sets decides whether and how often weftd pets:
// WATCHDOG_USEC, and WATCHDOG_PID, which must name this process.
func TestWatchdogEnvironment(t *testing.T) {
	for _, tc := range []struct {
		name, usec, pid string
		pets            bool
	}{
		{"this process", "100000", strconv.Itoa(os.Getpid()), true},
		{"no WATCHDOG_PID", "100000", "", true},
		{"another process", "100000", "1", false},
		{"no watchdog", "", "", false},
		{"bad WATCHDOG_USEC", "soon", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock, nl := listenNotify(t, func() bool { return true })
			t.Setenv("NOTIFY_SOCKET", sock)
			t.Setenv("WATCHDOG_USEC", tc.usec)
			t.Setenv("WATCHDOG_PID", tc.pid)
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			newSystemd(slog.New(slog.DiscardHandler)).startWatchdog(ctx, &wg, func() bool { return true })
			if tc.pets {
				// Every 50ms: half of WATCHDOG_USEC.
				waitFor(t, "3 pets", 5*time.Second, func() bool { return nl.count("WATCHDOG=1") >= 3 })
			} else {
				time.Sleep(300 * time.Millisecond)
				if got := nl.all(); len(got) != 0 {
					t.Errorf("sent %v", got)
				}
			}
			cancel()
			wg.Wait()
		})
	}
}

// Without NOTIFY_SOCKET (weftd not run by systemd, or Type=simple)
// nothing is sent and nothing is logged.
func TestSystemdWithoutNotifySocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	logs := &syncbuf.Buffer{}
	s := newSystemd(slog.New(slog.NewTextHandler(logs, nil)))
	s.status("not ready: listing leases")
	s.ready("ready")
	s.stopping()
	if logs.String() != "" {
		t.Errorf("logged %q", logs.String())
	}
}
