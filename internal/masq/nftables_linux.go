package masq

import (
	"context"
	"fmt"
	"slices"

	"sigs.k8s.io/knftables"
)

// NFTables keeps the rules in table inet weft with the nft command.
type NFTables struct {
	nft knftables.Interface
}

// NewNFTables checks that nft works here.
func NewNFTables() (*NFTables, error) {
	nft, err := knftables.New(knftables.InetFamily, NFTTable)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return &NFTables{nft: nft}, nil
}

type nftChain struct {
	chain *knftables.Chain
	rules []NFTRule
}

func (m *NFTables) chains(c Config) []nftChain {
	post, fwd := NFTRules(c)
	return []nftChain{
		{&knftables.Chain{
			Name:     nftPostrouting,
			Type:     knftables.PtrTo(knftables.NATType),
			Hook:     knftables.PtrTo(knftables.PostroutingHook),
			Priority: knftables.PtrTo(knftables.SNATPriority),
		}, post},
		{&knftables.Chain{
			Name:     nftForward,
			Type:     knftables.PtrTo(knftables.FilterType),
			Hook:     knftables.PtrTo(knftables.ForwardHook),
			Priority: knftables.PtrTo(knftables.FilterPriority),
		}, fwd},
	}
}

// Ensure implements Manager. A chain is rewritten (flush and refill, in
// one atomic transaction) when the comments the kernel lists differ from
// the wanted ones; a chain with no rules is deleted, and the table with
// it when both are empty.
func (m *NFTables) Ensure(ctx context.Context, c Config) (bool, error) {
	if err := c.Validate(); err != nil {
		return false, err
	}
	chains := m.chains(c)
	tx := m.nft.NewTransaction()
	empty := true
	for _, ch := range chains {
		if len(ch.rules) > 0 {
			empty = false
		}
	}
	if empty {
		tables, err := m.tableExists(ctx)
		if err != nil || !tables {
			return false, err
		}
		tx.Delete(&knftables.Table{})
		if err := m.nft.Run(ctx, tx); err != nil {
			return false, fmt.Errorf("nft delete table inet %s: %w", NFTTable, err)
		}
		return true, nil
	}

	tx.Add(&knftables.Table{})
	for _, ch := range chains {
		listed, err := m.nft.ListRules(ctx, ch.chain.Name)
		missing := knftables.IsNotFound(err)
		if err != nil && !missing {
			return false, fmt.Errorf("nft list chain inet %s %s: %w", NFTTable, ch.chain.Name, err)
		}
		if len(ch.rules) == 0 {
			if !missing {
				tx.Delete(ch.chain)
			}
			continue
		}
		if !missing && slices.Equal(comments(listed), wantComments(ch.rules)) {
			continue
		}
		tx.Add(ch.chain)
		tx.Flush(ch.chain)
		for _, r := range ch.rules {
			tx.Add(&knftables.Rule{Chain: ch.chain.Name, Rule: r.Rule, Comment: knftables.PtrTo(r.Comment)})
		}
	}
	if tx.NumOperations() == 1 { // just the idempotent "add table"
		return false, nil
	}
	if err := m.nft.Run(ctx, tx); err != nil {
		return false, fmt.Errorf("nft: update table inet %s: %w", NFTTable, err)
	}
	return true, nil
}

func (m *NFTables) tableExists(ctx context.Context) (bool, error) {
	_, err := m.nft.List(ctx, "chains")
	switch {
	case err == nil:
		return true, nil
	case knftables.IsNotFound(err):
		return false, nil
	default:
		return false, fmt.Errorf("nft list table inet %s: %w", NFTTable, err)
	}
}

func comments(rules []*knftables.Rule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		if r.Comment != nil {
			out[i] = *r.Comment
		}
	}
	return out
}

func wantComments(rules []NFTRule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = r.Comment
	}
	return out
}
