package masq

// New returns the nftables Manager when nftables is true (the network
// config's EnableNFTables), else the iptables one.
func New(nftables bool) (Manager, error) {
	if nftables {
		return NewNFTables()
	}
	return NewIPTables()
}
