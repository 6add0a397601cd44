package netlinkx

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestDumpRetriesInterrupted(t *testing.T) {
	h := &Handle{}
	calls := 0
	got, err := dump(h, "test", func() ([]int, error) {
		calls++
		if calls < 3 {
			return []int{1}, netlink.ErrDumpInterrupted // partial: must be dropped
		}
		return []int{1, 2, 3}, nil
	})
	if err != nil || len(got) != 3 || calls != 3 || h.Dumps() != 3 {
		t.Fatalf("got %v, %v after %d calls (%d counted), want 3 items after 3 calls", got, err, calls, h.Dumps())
	}
}

func TestDumpGivesUp(t *testing.T) {
	h := &Handle{}
	calls := 0
	got, err := dump(h, "test", func() ([]int, error) {
		calls++
		return []int{1}, netlink.ErrDumpInterrupted
	})
	if !errors.Is(err, netlink.ErrDumpInterrupted) || got != nil || calls != dumpAttempts {
		t.Fatalf("got %v, %v after %d calls; want nil and ErrDumpInterrupted after %d", got, err, calls, dumpAttempts)
	}
}

func TestDumpOtherErrorNotRetried(t *testing.T) {
	h := &Handle{}
	calls := 0
	boom := errors.New("boom")
	_, err := dump(h, "test", func() (int, error) { calls++; return 0, boom })
	if !errors.Is(err, boom) || calls != 1 {
		t.Fatalf("got %v after %d calls, want boom after 1", err, calls)
	}
}

func TestMAC(t *testing.T) {
	m, err := ParseMAC("C6:D2:32:6F:8F:44")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(struct{ VtepMAC MAC }{m})
	if string(b) != `{"VtepMAC":"c6:d2:32:6f:8f:44"}` {
		t.Errorf("marshal: %s", b)
	}
	var back struct{ VtepMAC MAC }
	if err := json.Unmarshal(b, &back); err != nil || back.VtepMAC != m {
		t.Errorf("unmarshal: %v %v", back.VtepMAC, err)
	}
	if !m.IsUnicast() {
		t.Errorf("%s should be unicast", m)
	}
	for _, bad := range []string{"", "c6:d2:32:6f:8f", "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", "zz:d2:32:6f:8f:44"} {
		if _, err := ParseMAC(bad); err == nil {
			t.Errorf("ParseMAC(%q) accepted", bad)
		}
	}
	for s, uni := range map[string]bool{"00:00:00:00:00:00": false, "33:33:00:00:00:01": false, "02:00:00:00:00:01": true} {
		if m, _ := ParseMAC(s); m.IsUnicast() != uni {
			t.Errorf("%s IsUnicast = %v", s, !uni)
		}
	}
}
