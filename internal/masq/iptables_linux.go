package masq

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/coreos/go-iptables/iptables"
)

// IPTables keeps the rules with the iptables and ip6tables commands.
type IPTables struct {
	mu      sync.Mutex
	v4      *iptables.IPTables
	v6      *iptables.IPTables // nil when ip6tables is missing
	variant IPTablesVariant
	// built holds each chain's listing right after weftd wrote it, with
	// the rendering it was written from, keyed by proto/table/chain.
	// Comparing later listings with it rather than with a rendering of our
	// own keeps the check exact whatever spelling this iptables version
	// lists rules in; the rendering tells when the wanted rules changed.
	built map[string]builtChain
}

// NewIPTables finds iptables (and ip6tables, needed only when the network
// has IPv6) of back end v.
func NewIPTables(v IPTablesVariant) (*IPTables, error) {
	v4, err := v.New(iptables.ProtocolIPv4)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", v.Command(iptables.ProtocolIPv4), err)
	}
	m := &IPTables{v4: v4, variant: v, built: map[string]builtChain{}}
	if v6, err := v.New(iptables.ProtocolIPv6); err == nil {
		m.v6 = v6
	}
	return m, nil
}

// Variant is the back end m writes with.
func (m *IPTables) Variant() IPTablesVariant { return m.variant }

// Ensure implements Manager.
func (m *IPTables) Ensure(ctx context.Context, c Config) (bool, error) {
	if err := c.Validate(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	changed := false
	fams := []struct {
		ipt             *iptables.IPTables
		network, subnet netip.Prefix
		name            string
	}{
		{m.v4, c.Network, c.Subnet, "iptables"},
		{m.v6, c.IPv6Network, c.IPv6Subnet, "ip6tables"},
	}
	for _, f := range fams {
		if err := ctx.Err(); err != nil {
			return changed, err
		}
		if f.ipt == nil {
			if f.network.IsValid() {
				return changed, fmt.Errorf("%s: not found, but the network has IPv6 (%s)", f.name, f.network)
			}
			continue
		}
		// A family not in use gets its chains removed, in case an earlier
		// config left them.
		masqRules, fwdRules := iptablesChains()
		if f.network.IsValid() {
			masqRules, fwdRules = IPTablesRules(f.network, f.subnet, f.ipt.HasRandomFully() && !c.NoFullyRandom)
		}
		for _, cr := range []struct {
			rules ChainRules
			want  bool
		}{
			{masqRules, c.Masquerade && f.network.IsValid()},
			{fwdRules, c.Forward && f.network.IsValid()},
		} {
			var ch bool
			var err error
			if cr.want {
				ch, err = m.ensureChain(f.ipt, f.name, cr.rules)
			} else {
				ch, err = m.removeChain(f.ipt, f.name, cr.rules)
			}
			changed = changed || ch
			if err != nil {
				return changed, err
			}
		}
	}
	return changed, nil
}

// ensureChain makes cr's chain hold exactly its rules, in order, and the
// jump to it sit in its parent.
func (m *IPTables) ensureChain(ipt *iptables.IPTables, name string, cr ChainRules) (bool, error) {
	key := name + "/" + cr.Table + "/" + cr.Chain
	changed := false
	exists, err := ipt.ChainExists(cr.Table, cr.Chain)
	if err != nil {
		return false, fmt.Errorf("%s -t %s: chain %s: %w", name, cr.Table, cr.Chain, err)
	}
	var listing []string
	if exists {
		if listing, err = ipt.List(cr.Table, cr.Chain); err != nil {
			return false, fmt.Errorf("%s -t %s -S %s: %w", name, cr.Table, cr.Chain, err)
		}
	}
	want := wantListing(cr)
	b, built := m.built[key]
	if built && !slices.Equal(b.want, want) {
		built = false // the wanted rules changed: what was built is stale
	}
	ok := exists && (built && slices.Equal(listing, b.listing) || !built && sameRules(listing, want))
	if !ok {
		// Flush and refill: order matters (the RETURNs must come before
		// the MASQUERADEs), so a missing rule cannot simply be appended.
		if err := ipt.ClearChain(cr.Table, cr.Chain); err != nil { // creates it when missing
			return false, fmt.Errorf("%s -t %s: reset chain %s: %w", name, cr.Table, cr.Chain, err)
		}
		for _, r := range cr.Rules {
			if err := ipt.Append(r.Table, r.Chain, r.Spec...); err != nil {
				return true, fmt.Errorf("%s -t %s: %s: %w", name, r.Table, r, err)
			}
		}
		if listing, err = ipt.List(cr.Table, cr.Chain); err != nil {
			return true, fmt.Errorf("%s -t %s -S %s: %w", name, cr.Table, cr.Chain, err)
		}
		changed = true
	}
	m.built[key] = builtChain{want: want, listing: listing}

	has, err := ipt.Exists(cr.Table, cr.Parent, cr.Jump...)
	if err != nil {
		return changed, fmt.Errorf("%s -t %s: check jump from %s: %w", name, cr.Table, cr.Parent, err)
	}
	if !has {
		// First in the parent, so that no other rule decides before ours.
		if err := ipt.Insert(cr.Table, cr.Parent, 1, cr.Jump...); err != nil {
			return true, fmt.Errorf("%s -t %s: insert jump from %s: %w", name, cr.Table, cr.Parent, err)
		}
		changed = true
	}
	return changed, nil
}

// builtChain is a chain as weftd wrote it.
type builtChain struct {
	want    []string // our rendering (wantListing)
	listing []string // what iptables listed right after
}

// removeChain deletes cr's jump and chain if present.
func (m *IPTables) removeChain(ipt *iptables.IPTables, name string, cr ChainRules) (bool, error) {
	delete(m.built, name+"/"+cr.Table+"/"+cr.Chain)
	exists, err := ipt.ChainExists(cr.Table, cr.Chain)
	if err != nil || !exists {
		return false, err
	}
	for {
		// The jump may have been inserted more than once by hand or by an
		// older weftd; delete until none is left.
		has, err := ipt.Exists(cr.Table, cr.Parent, cr.Jump...)
		if err != nil {
			return false, fmt.Errorf("%s -t %s: check jump from %s: %w", name, cr.Table, cr.Parent, err)
		}
		if !has {
			break
		}
		if err := ipt.Delete(cr.Table, cr.Parent, cr.Jump...); err != nil {
			return true, fmt.Errorf("%s -t %s: delete jump from %s: %w", name, cr.Table, cr.Parent, err)
		}
	}
	if err := ipt.ClearAndDeleteChain(cr.Table, cr.Chain); err != nil {
		return true, fmt.Errorf("%s -t %s: delete chain %s: %w", name, cr.Table, cr.Chain, err)
	}
	return true, nil
}

// wantListing is cr as `iptables -S chain` lists it.
func wantListing(cr ChainRules) []string {
	out := []string{"-N " + cr.Chain}
	for _, r := range cr.Rules {
		out = append(out, r.String())
	}
	return out
}

// sameRules compares a listing with our rendering, ignoring quoting and
// spacing: enough to adopt the rules a previous weftd left without
// rewriting them.
func sameRules(listing, want []string) bool {
	norm := func(s string) string { return strings.Join(strings.Fields(strings.ReplaceAll(s, `"`, "")), " ") }
	return len(listing) == len(want) && slices.EqualFunc(listing, want, func(a, b string) bool { return norm(a) == norm(b) })
}
