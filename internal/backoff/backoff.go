// Package backoff is the one retry delay of weft: exponential, capped and
// jittered, for every loop that reconnects to a store or retries a failed
// call.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Jittered is the delay before retry number attempt (0 for the first): lo
// doubled per attempt up to hi, then a random point between half of that
// and all of it, so that nodes restarted together do not retry in step.
func Jittered(attempt int, lo, hi time.Duration) time.Duration {
	d := hi
	if attempt < 62 && lo<<attempt > 0 && lo<<attempt < hi {
		d = lo << attempt
	}
	return d/2 + rand.N(d/2+1)
}
