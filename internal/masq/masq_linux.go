package masq

import "context"

// New returns the nftables Manager when nftables is true (the network
// config's EnableNFTables), else the iptables one, on the back end kubelet
// uses (DetectIPTables).
func New(ctx context.Context, nftables bool) (Manager, error) {
	if nftables {
		return NewNFTables()
	}
	return NewIPTables(DetectIPTables(ctx))
}
