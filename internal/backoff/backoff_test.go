package backoff

import (
	"testing"
	"time"
)

func TestJittered(t *testing.T) {
	for attempt, ceil := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second} {
		lo, hi := ceil, time.Duration(0)
		for range 200 {
			d := Jittered(attempt, time.Second, 10*time.Second)
			if d < ceil/2 || d > ceil {
				t.Fatalf("attempt %d: %v outside [%v, %v]", attempt, d, ceil/2, ceil)
			}
			lo, hi = min(lo, d), max(hi, d)
		}
		if lo == hi {
			t.Errorf("attempt %d: no jitter (%v)", attempt, lo)
		}
	}
	// Shifts that overflow must not wrap around to tiny or negative delays.
	for _, attempt := range []int{40, 61, 62, 63, 64, 1000} {
		if d := Jittered(attempt, 100*time.Millisecond, 10*time.Second); d < 5*time.Second || d > 10*time.Second {
			t.Errorf("attempt %d: %v outside [5s, 10s]", attempt, d)
		}
	}
}
