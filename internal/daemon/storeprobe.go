package daemon

import (
	"context"
	"time"
)

// pinger is a store that can say cheaply whether it answers (etcd: a
// linearizable read, which fails without quorum).
type pinger interface {
	Ping(ctx context.Context) error
}

// How often the store is probed while it answers, and while it does not:
// an outage shows within storeProbeUp, the end of one within
// storeProbeDown.
const (
	storeProbeUp   = 5 * time.Second
	storeProbeDown = 500 * time.Millisecond
)

// probeStore keeps weft_store_up and weft_store_last_success_timestamp_
// seconds, and logs an outage once when it starts and once when it ends,
// until ctx ends. The datapath does not depend on it: it stays as it is
// while the store is away.
func (d *daemon) probeStore(ctx context.Context, p pinger) {
	// Only a store that can be probed has these metrics.
	if err := d.metrics.reg.Register(d.metrics.storeUp); err != nil {
		d.log.Warn("store metrics", "err", err)
	}
	if err := d.metrics.reg.Register(d.metrics.storeLastOK); err != nil {
		d.log.Warn("store metrics", "err", err)
	}
	up, since := true, time.Now()
	d.metrics.storeUp.Set(1)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := p.Ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil && !up:
			d.log.Info("store reachable again", "down_for", time.Since(since).Round(time.Millisecond))
			up, since = true, time.Now()
		case err != nil && up:
			d.log.Warn("store unreachable; the datapath stays as it is until it returns", "err", err)
			up, since = false, time.Now()
		}
		if up {
			d.metrics.storeUp.Set(1)
			d.metrics.storeLastOK.Set(unixSeconds(time.Now()))
			t.Reset(storeProbeUp)
		} else {
			d.metrics.storeUp.Set(0)
			t.Reset(storeProbeDown)
		}
	}
}
