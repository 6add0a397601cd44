package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// systemd tells the service manager of a Type=notify unit how weftd is
// doing (sd_notify(3)): READY=1 once the node can serve pods, STATUS= lines
// as that changes, STOPPING=1 at shutdown, and WATCHDOG=1 keep-alives while
// the daemon's loop turns. Without NOTIFY_SOCKET every call does nothing.
type systemd struct {
	log *slog.Logger
	// notify sends one message; sd.SdNotify outside tests.
	notify func(state string) (sent bool, err error)

	mu         sync.Mutex
	readySent  bool
	lastStatus string
	warned     bool // a failed send was logged
}

func newSystemd(log *slog.Logger) *systemd {
	return &systemd{log: log, notify: func(state string) (bool, error) {
		// false: the variables stay for later messages.
		return sd.SdNotify(false, state)
	}}
}

func (s *systemd) send(state string) {
	_, err := s.notify(state)
	if err == nil {
		return
	}
	s.mu.Lock()
	warn := !s.warned
	s.warned = true
	s.mu.Unlock()
	if warn {
		s.log.Warn("cannot notify systemd (NOTIFY_SOCKET)", "err", err)
	}
}

// status sets the unit's status line (systemctl status) unless it says
// that already.
func (s *systemd) status(text string) {
	line := statusLine(text)
	s.mu.Lock()
	changed := line != s.lastStatus
	s.lastStatus = line
	s.mu.Unlock()
	if changed {
		s.send(line)
	}
}

// ready reports that the node serves pods: READY=1 the first time, with
// the status line.
func (s *systemd) ready(status string) {
	line := statusLine(status)
	s.mu.Lock()
	first := !s.readySent
	changed := line != s.lastStatus
	s.readySent, s.lastStatus = true, line
	s.mu.Unlock()
	switch {
	case first:
		s.send(sd.SdNotifyReady + "\n" + line)
	case changed:
		s.send(line)
	}
}

func statusLine(text string) string { return "STATUS=" + strings.ReplaceAll(text, "\n", " ") }

// readyStatus is the status line of a ready node.
func (d *daemon) readyStatus(leases int) string {
	return fmt.Sprintf("ready: subnet %s, %d leases", leaseName(d.own), leases)
}

func (s *systemd) stopping() {
	s.send(sd.SdNotifyStopping + "\nSTATUS=stopping; the datapath stays in place")
}

// startWatchdog pets systemd's watchdog, when the unit has one
// (WatchdogSec=, which sets WATCHDOG_USEC, and WATCHDOG_PID naming this
// process), every half interval as sd_watchdog_enabled(3) advises, as long
// as live reports the daemon's loop alive: a wedged loop stops the pets and
// systemd restarts weftd. It returns at once; the pets end with ctx.
func (s *systemd) startWatchdog(ctx context.Context, wg *sync.WaitGroup, live func() bool) {
	interval, err := sd.SdWatchdogEnabled(false)
	if err != nil {
		s.log.Warn("ignoring systemd's watchdog settings", "err", err)
		return
	}
	if interval <= 0 {
		return
	}
	s.log.Info("petting systemd's watchdog while the loop runs", "watchdog", interval)
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.watchdog(ctx, interval/2, live)
	}()
}

func (s *systemd) watchdog(ctx context.Context, every time.Duration, live func() bool) {
	t := time.NewTicker(every)
	defer t.Stop()
	stuck := false
	for {
		if live() {
			stuck = false
			s.send(sd.SdNotifyWatchdog)
		} else if !stuck {
			stuck = true
			s.log.Error("daemon loop stuck; no longer petting systemd's watchdog")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
