package doctor

import (
	"strconv"
	"time"
)

// Seconds is a duration that JSON carries as whole seconds (the unit
// etcd gives TTLs in), so that `weft status -o json` reads without knowing
// Go's nanoseconds.
type Seconds time.Duration

func (s Seconds) MarshalJSON() ([]byte, error) {
	return strconv.AppendInt(nil, int64(time.Duration(s)/time.Second), 10), nil
}

func (s *Seconds) UnmarshalJSON(b []byte) error {
	v, err := strconv.ParseInt(string(b), 10, 64)
	*s = Seconds(time.Duration(v) * time.Second)
	return err
}

// Millis is a duration that JSON carries as milliseconds, with
// microseconds as the fraction (round trips).
type Millis time.Duration

func (m Millis) MarshalJSON() ([]byte, error) {
	return strconv.AppendFloat(nil, float64(time.Duration(m).Microseconds())/1000, 'f', -1, 64), nil
}

func (m *Millis) UnmarshalJSON(b []byte) error {
	v, err := strconv.ParseFloat(string(b), 64)
	*m = Millis(time.Duration(v * float64(time.Millisecond)))
	return err
}
