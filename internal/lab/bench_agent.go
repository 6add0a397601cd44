package lab

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

// fakePublicIPs is where fake nodes live: the benchmarking range
// (RFC 2544), which no lab or real network routes. The vxlan backend
// programs a route, neighbour and FDB entry for any PublicIP without sending
// a packet, so leases naming these cost the agent what real ones would.
var fakePublicIPs = netip.MustParsePrefix("198.18.0.0/15")

// fakeVXLANLeases returns count vxlan leases of /bits subnets of network,
// starting at its index-th subnet (index 0 is the network's own first one),
// each with a PublicIP in fakePublicIPs and a random VtepMAC. They are
// distinct from each other and from every lease of another call with a
// disjoint index range.
func fakeVXLANLeases(network netip.Prefix, bits, index, count int) ([]lease.Lease, error) {
	if bits < network.Bits() || bits > 30 || !network.Addr().Is4() {
		return nil, fmt.Errorf("fake leases: /%d subnets of %s", bits, network)
	}
	have := uint64(1) << (bits - network.Bits())
	if index < 0 || uint64(index+count) > have {
		return nil, fmt.Errorf("fake leases: %s has %d /%d subnets, want %d from index %d", network, have, bits, count, index)
	}
	if uint64(index+count) >= uint64(1)<<(32-fakePublicIPs.Bits()) {
		return nil, fmt.Errorf("fake leases: %d leases do not fit in %s", index+count, fakePublicIPs)
	}
	pubBase := u32(fakePublicIPs.Addr())
	out := make([]lease.Lease, 0, count)
	for k := index; k < index+count; k++ {
		var mac [6]byte
		if _, err := rand.Read(mac[:]); err != nil {
			return nil, err
		}
		mac[0] = mac[0]&^1 | 2 // unicast, locally administered
		data, err := json.Marshal(struct {
			VNI     int
			VtepMAC string
		}{config.DefaultVNI, fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5])})
		if err != nil {
			return nil, err
		}
		out = append(out, lease.Lease{
			Subnet: subnetAt(network, bits, k),
			Attrs: lease.Attrs{
				PublicIP:    addr4(pubBase + uint32(k) + 1),
				BackendType: config.BackendVXLAN,
				BackendData: data,
			},
		})
	}
	return out, nil
}

// subnetAt is the index-th /bits subnet of the IPv4 network.
func subnetAt(network netip.Prefix, bits, index int) netip.Prefix {
	size := uint32(1) << (32 - bits)
	return netip.PrefixFrom(addr4(u32(network.Masked().Addr())+uint32(index)*size), bits)
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addr4(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// quantile returns the q-quantile (0..1) of ds by the nearest-rank method;
// 0 for none.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// parseVmHWM reads the peak resident set size, in bytes, from the text of
// /proc/<pid>/status.
func parseVmHWM(status []byte) (int64, error) {
	for line := range strings.Lines(string(status)) {
		rest, ok := strings.CutPrefix(line, "VmHWM:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("VmHWM line %q", strings.TrimSpace(line))
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmHWM line %q: %w", strings.TrimSpace(line), err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("no VmHWM in /proc/<pid>/status")
}

// clockTick is USER_HZ, the unit of the CPU times in /proc: 100 on every
// Linux architecture Go supports.
const clockTick = 100

// parsePIDStatCPU returns utime+stime from the text of /proc/<pid>/stat.
func parsePIDStatCPU(stat []byte) (time.Duration, error) {
	// Fields after the command name, which is parenthesised and may hold
	// spaces: state is field 3, utime 14, stime 15.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/<pid>/stat: no command name")
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/<pid>/stat: %d fields after the name", len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/<pid>/stat: %w", err)
		}
		ticks += v
	}
	return ticksToDuration(ticks), nil
}

// parseMachineCPU returns the time all CPUs spent busy (user, nice, system,
// irq, softirq, steal; not idle or iowait) from the text of /proc/stat.
func parseMachineCPU(stat []byte) (time.Duration, error) {
	for line := range strings.Lines(string(stat)) {
		f := strings.Fields(line)
		if len(f) < 9 || f[0] != "cpu" {
			continue
		}
		var ticks int64
		for _, i := range []int{1, 2, 3, 6, 7, 8} {
			v, err := strconv.ParseInt(f[i], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/stat: %w", err)
			}
			ticks += v
		}
		return ticksToDuration(ticks), nil
	}
	return 0, fmt.Errorf("/proc/stat: no cpu line")
}

func ticksToDuration(ticks int64) time.Duration {
	return time.Duration(ticks) * time.Second / clockTick
}

var programmedRE = regexp.MustCompile(`msg="programmed (\d+) leases in ([0-9.]+[a-zµ]+)"`)

// parseProgrammed finds the agent's own start-up figure in its log: how
// many leases it programmed and how long after its start.
func parseProgrammed(log []byte) (int, time.Duration, bool) {
	m := programmedRE.FindSubmatch(log)
	if m == nil {
		return 0, 0, false
	}
	n, err1 := strconv.Atoi(string(m[1]))
	d, err2 := time.ParseDuration(string(m[2]))
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return n, d, true
}

// verdict says whether value meets target: at most target when lower is
// better, at least target otherwise.
func verdict(value, target float64, lowerIsBetter bool) string {
	if lowerIsBetter && value <= target || !lowerIsBetter && value >= target {
		return "meets"
	}
	return "MISSES"
}
