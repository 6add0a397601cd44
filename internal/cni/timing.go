package cni

import (
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// TimingsEnv names the environment variable that turns on the plugin's
// own timing: when it names a file, each ADD appends one JSON line (a
// Timing) to it. `weft lab bench` sets it to show where an ADD's time goes;
// the runtime's environment reaches the plugin, so an operator can too.
const TimingsEnv = "WEFT_CNI_TIMINGS"

// Timing is what one ADD spent in each of its steps, in order, as the
// plugin measured them from the start of Add (after the process started
// and skel read stdin).
type Timing struct {
	Command     string      `json:"command"`
	ContainerID string      `json:"containerID"`
	Steps       []TimedStep `json:"steps"`
	Err         string      `json:"error,omitempty"`
}

// TimedStep is one step of a Timing.
type TimedStep struct {
	Step string        `json:"step"`
	D    time.Duration `json:"ns"`
}

// Total is the time of all steps.
func (t Timing) Total() time.Duration {
	var sum time.Duration
	for _, s := range t.Steps {
		sum += s.D
	}
	return sum
}

// stopwatch records the steps of one command; the zero value (timing
// off) records nothing.
type stopwatch struct {
	file string
	last time.Time
	t    Timing
}

func newStopwatch(file, command, containerID string) *stopwatch {
	return &stopwatch{file: file, last: time.Now(), t: Timing{Command: command, ContainerID: containerID}}
}

// lap ends the step named step.
func (s *stopwatch) lap(step string) {
	if s.file == "" {
		return
	}
	now := time.Now()
	s.t.Steps = append(s.t.Steps, TimedStep{Step: step, D: now.Sub(s.last)})
	s.last = now
}

// write appends the timing as one line. One write of an O_APPEND file, so
// that plugins running at once do not interleave their lines. A failure is
// reported on stderr only: timing never fails a pod.
func (s *stopwatch) write(err error) {
	if s.file == "" {
		return
	}
	if err != nil {
		s.t.Err = err.Error()
	}
	line, jerr := json.Marshal(s.t)
	if jerr == nil {
		var f *os.File
		if f, jerr = os.OpenFile(s.file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); jerr == nil {
			_, jerr = f.Write(append(line, '\n'))
			if cerr := f.Close(); jerr == nil {
				jerr = cerr
			}
		}
	}
	if jerr != nil {
		fmt.Fprintf(os.Stderr, "weft-cni: writing timings to %s ($%s): %v\n", s.file, TimingsEnv, jerr)
	}
}
