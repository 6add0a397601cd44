package netlinkx

import "golang.org/x/sys/unix"

// ErrNoAnswer is errNoAnswer, for tests.
var ErrNoAnswer = errNoAnswer

// SetBatchLimits sets how many changes one batch write of h carries and,
// when rcvbuf > 0, the batch socket's receive buffer (SO_RCVBUF, which
// the kernel doubles), so that tests reach chunk boundaries and a full
// buffer with few changes.
func SetBatchLimits(h *Handle, maxAcks, rcvbuf int) error {
	h.bmu.Lock()
	defer h.bmu.Unlock()
	h.bs.maxAcks = maxAcks
	if rcvbuf > 0 {
		return unix.SetsockoptInt(h.bs.s.GetFd(), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
	}
	return nil
}

// BatchLimit is how many changes one batch write of h carries.
func BatchLimit(h *Handle) int {
	h.bmu.Lock()
	defer h.bmu.Unlock()
	return h.bs.maxAcks
}
