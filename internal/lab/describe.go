package lab

import (
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"strings"
	"text/tabwriter"
)

// Describe writes where everything of the lab is, and commands to try.
func (s *State) Describe(w io.Writer) {
	fmt.Fprintf(w, "lab %s (%s, %d nodes) in %s\n", s.Name, s.Backend, len(s.Nodes), s.Dir)
	for _, m := range s.EtcdMembers {
		fmt.Fprintf(w, "  store     %s  (etcd %s in namespace %s, log %s)\n", m.ClientURL, m.Name, s.ControlNS, m.Log)
	}
	if len(s.EtcdMembers) == 0 {
		fmt.Fprintf(w, "  store     %s  (namespace %s, log %s)\n", s.EtcdEndpoint, s.ControlNS, s.EtcdLog)
	}
	if t := s.EtcdTLS; t != nil {
		fmt.Fprintf(w, "  etcd TLS  CA %s, client %s %s, user %s (root's password in %s)\n", t.CA, t.ClientCert, t.ClientKey, t.User,
			filepath.Join(s.Dir, stateFile))
	}
	underlay, network := underlayPrefix, s.Network
	switch s.IPFamily {
	case IPFamilyDual:
		underlay, network = underlayPrefix+" and "+underlayPrefix6, s.Network+" and "+s.IPv6Network
	case IPFamilyIPv6:
		underlay, network = underlayPrefix+" and "+underlayPrefix6, s.IPv6Network+" (IPv6 only)"
	}
	fmt.Fprintf(w, "  underlay  bridge br0 in namespace %s, %s, %s\n", s.UnderlayNS, underlay, s.UnderlayGSONote())
	fmt.Fprintf(w, "  network   %s\n\n", network)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tNAMESPACE\tPUBLIC IP\tSUBNET\tSUBNET FILE\tLOG")
	for _, n := range s.Nodes {
		pub, sub := joinValid(n.PublicIP, n.PublicIPv6), joinValid(n.Subnet, n.Subnet6)
		fmt.Fprintf(tw, "n%d\t%s\t%s\t%s\t%s\t%s\n", n.Index, n.NS, pub, sub, n.SubnetFile, n.Log)
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tNAMESPACE\tIP\tNODE")
	var first, last *Pod
	for i := range s.Nodes {
		for j := range s.Nodes[i].Pods {
			p := &s.Nodes[i].Pods[j]
			fmt.Fprintf(tw, "%s\t%s\t%s\tn%d\n", p.Name, p.NS, joinValid(p.IP, p.IP6), p.Node)
			if first == nil {
				first = p
			}
			last = p
		}
	}
	_ = tw.Flush()
	fmt.Fprintln(w, "\ntry:")
	if first != nil && last != nil && first != last {
		for _, a := range []netip.Addr{last.IP, last.IP6} {
			if a.IsValid() {
				fmt.Fprintf(w, "  ip netns exec %s ping -c 3 %s\n", first.NS, a)
			}
		}
	}
	if len(s.Nodes) > 0 {
		n := s.Nodes[0]
		fmt.Fprintf(w, "  ip -n %s route\n", n.NS)
		fmt.Fprintf(w, "  ip -n %s -d link show\n", n.NS)
		fmt.Fprintf(w, "  cat %s\n", n.SubnetFile)
		fmt.Fprintf(w, "  tail -f %s\n", n.Log)
	}
	lab := " --lab " + s.Name
	if filepath.Dir(s.Dir) != DefaultRoot {
		lab = " --lab " + s.Dir
	}
	fmt.Fprintf(w, "  weft lab check%s; weft lab bench%s; weft lab down%s\n", lab, lab, lab)
}

// joinValid renders the valid ones of vs, comma-separated, or "-".
func joinValid[T interface {
	IsValid() bool
	String() string
}](vs ...T) string {
	var parts []string
	for _, v := range vs {
		if v.IsValid() {
			parts = append(parts, v.String())
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ",")
}

// UnderlayGSONote says what GSO packets the underlay's links take.
func (s *State) UnderlayGSONote() string {
	switch {
	case s.UnderlayGSO > KernelGSO:
		return fmt.Sprintf("BIG TCP (gso/gro_ipv4_max_size %d)", s.UnderlayGSO)
	case s.UnderlayGSO == KernelGSO:
		return "no BIG TCP (GSO 64 KiB)"
	default:
		return "no BIG TCP (kernel has none for IPv4)"
	}
}
