package lease

import (
	"errors"
	"fmt"
	"math/big"
	"math/rand/v2"
	"net/netip"

	"github.com/weft-net/weft/internal/config"
)

// ErrPoolExhausted means every subnet of a family's pool is taken. It names
// no keys: the store wraps it with the family's range (SubnetMin/SubnetMax or
// IPv6SubnetMin/IPv6SubnetMax), which is what a user has to widen.
var ErrPoolExhausted = errors.New("no free subnet left in the pool: remove stale leases or widen the range")

// Pool is the set of subnets a network hands out.
type Pool struct {
	first netip.Addr // SubnetMin
	count *big.Int   // number of subnets from SubnetMin to SubnetMax inclusive
	bits  int        // address length, 32 or 128
	len   int        // subnet prefix length
}

// PoolV4 is the IPv4 pool of n.
func PoolV4(n *config.Network) Pool {
	return newPool(n.SubnetMin, n.SubnetMax, n.SubnetLen)
}

// PoolV6 is the IPv6 pool of n.
func PoolV6(n *config.Network) Pool {
	return newPool(n.IPv6SubnetMin, n.IPv6SubnetMax, n.IPv6SubnetLen)
}

func newPool(lo, hi netip.Addr, l int) Pool {
	bits := lo.BitLen()
	span := new(big.Int).Sub(addrInt(hi), addrInt(lo))
	count := span.Rsh(span, uint(bits-l))
	return Pool{first: lo, count: count.Add(count, big.NewInt(1)), bits: bits, len: l}
}

// Size is the number of subnets in the pool, saturated at 1<<62.
func (p Pool) Size() int64 {
	if p.count.IsInt64() && p.count.Int64() < 1<<62 {
		return p.count.Int64()
	}
	return 1 << 62
}

// Contains reports whether s is one of the pool's subnets.
func (p Pool) Contains(s netip.Prefix) bool {
	if !s.IsValid() || s.Bits() != p.len || s.Addr().BitLen() != p.bits || s.Masked() != s {
		return false
	}
	off := new(big.Int).Sub(addrInt(s.Addr()), addrInt(p.first))
	if off.Sign() < 0 {
		return false
	}
	return off.Rsh(off, uint(p.bits-p.len)).Cmp(p.count) < 0
}

// At is the i-th subnet of the pool.
func (p Pool) At(i int64) netip.Prefix {
	off := new(big.Int).Lsh(big.NewInt(i), uint(p.bits-p.len))
	return netip.PrefixFrom(intAddr(off.Add(off, addrInt(p.first)), p.bits), p.len)
}

// Pick returns a random subnet of the pool that taken does not report, or
// ErrPoolExhausted. Random choice keeps two nodes that start together from
// racing for the same subnet; the store's transaction settles any race left.
func (p Pool) Pick(r *rand.Rand, taken func(netip.Prefix) bool) (netip.Prefix, error) {
	size := p.Size()
	// Random probes find a free subnet fast while the pool is not crowded.
	for range 64 {
		s := p.At(r.Int64N(size))
		if !taken(s) {
			return s, nil
		}
	}
	// Crowded: scan from a random start so the choice stays spread.
	start := r.Int64N(size)
	limit := min(size, 1<<20)
	for i := range limit {
		s := p.At((start + i) % size)
		if !taken(s) {
			return s, nil
		}
	}
	if limit < size {
		return netip.Prefix{}, fmt.Errorf("no free subnet among %d probed in a pool of %d: %w", limit, size, ErrPoolExhausted)
	}
	return netip.Prefix{}, ErrPoolExhausted
}

func addrInt(a netip.Addr) *big.Int { return new(big.Int).SetBytes(a.AsSlice()) }

func intAddr(i *big.Int, bits int) netip.Addr {
	b := make([]byte, bits/8)
	i.FillBytes(b)
	a, _ := netip.AddrFromSlice(b)
	return a
}
