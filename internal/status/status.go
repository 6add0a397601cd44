// Package status renders the cluster as one node sees it (weft status):
// a header with the store, the network config and the agent, then one row
// per lease with its subnets, public IPs, backend data, time left, whether
// this node has programmed it (over each IP family the lease has) and,
// when probed, the round trip over each family. The facts and the checks
// are doctor's (doctor.Gather, doctor.ClusterView); this package picks
// what an operator scans for and says what is wrong.
package status

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/weft-net/weft/internal/doctor"
)

// Status is what weft status prints.
type Status struct {
	Store  Line `json:"store"`
	Config Line `json:"config"`
	Agent  Line `json:"agent"`
	// Own and Own6 are this node's subnets; invalid when its subnet file
	// is unusable (or the network has no such family).
	Own  netip.Prefix `json:"own,omitzero"`
	Own6 netip.Prefix `json:"ownIPv6,omitzero"`
	// Programmed and ProgrammedIPv6 say the rows' State is known for
	// the leases' IPv4 and IPv6 subnets: doctor compared the kernel's
	// routes (neighbours, FDB) of that family with the leases.
	Programmed     bool  `json:"programmedKnown"`
	ProgrammedIPv6 bool  `json:"programmedIPv6Known"`
	Probed         bool  `json:"probed"`
	Rows           []Row `json:"nodes"`
	// Stale are subnets this node routes that no lease holds; StaleNodes
	// names the Node whose podCIDR one is (Kubernetes store).
	Stale      []netip.Prefix          `json:"stale,omitempty"`
	StaleNodes map[netip.Prefix]string `json:"staleNodes,omitempty"`
	Problems   []string                `json:"problems"`
	OK         bool                    `json:"ok"`
}

// Line is one header line: a check's verdict and evidence.
type Line struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// Row is one lease.
type Row struct {
	doctor.LeaseView
	// Data is the backend data in short: the VtepMAC (vxlan), a key's
	// fingerprint (wireguard).
	Data string `json:"data,omitempty"`
	// State is "this node", "programmed", "missing <what>" (IPv6 items
	// say so: "missing IPv6 route"), "unknown" (the datapath was not
	// checked), "IPv4 programmed, IPv6 unknown" (or the other way: one
	// family's checks could not run) or "expired".
	State string `json:"state"`
}

// Build makes the status from doctor's view.
func Build(v doctor.View) Status {
	s := Status{Own: v.Own, Own6: v.Own6, Programmed: v.Programmed, ProgrammedIPv6: v.ProgrammedIPv6, Stale: v.Stale, StaleNodes: v.StaleNode}
	var fails []string
	for _, r := range v.Report.Results {
		l := Line{Status: r.Status.String(), Message: r.Message}
		switch r.Check {
		case "store", "kube-api":
			s.Store = l
		case "config":
			s.Config = l
		case "agent":
			s.Agent = l
		case "readyz":
			if r.Status != doctor.Skip {
				s.Agent.Message += "; " + r.Message
				if r.Status > doctor.OK {
					s.Agent.Status = r.Status.String()
				}
			}
		}
		switch {
		case r.Status != doctor.Fail:
		case r.Check == "peer":
			// named on the lease's row and below
		default:
			fails = append(fails, fmt.Sprintf("%s: %s", r.Check, r.Message))
		}
	}
	ownHeld := false
	for _, lv := range v.Leases {
		row := Row{LeaseView: lv, Data: cmp.Or(backendData(lv.BackendData), backendData(lv.BackendV6Data))}
		pub := lv.PublicIP
		if !pub.IsValid() {
			pub = lv.PublicIPv6 // an IPv6-only lease
		}
		who := lv.Key + " (" + pub.String() + ")"
		if lv.Node != "" {
			who = lv.Node + " " + who
		}
		// Which of the lease's families doctor compared with the kernel.
		known4, known6 := lv.Subnet.IsValid() && v.Programmed, lv.IPv6Subnet.IsValid() && v.ProgrammedIPv6
		unknown4, unknown6 := lv.Subnet.IsValid() && !v.Programmed, lv.IPv6Subnet.IsValid() && !v.ProgrammedIPv6
		switch {
		case lv.Expired:
			row.State = "expired"
			s.Problems = append(s.Problems, fmt.Sprintf("%s: lease expired: its agent stopped renewing", who))
		case lv.Own:
			row.State, ownHeld = "this node", true
		case !known4 && !known6:
			row.State = "unknown"
		case lv.Missing != "":
			row.State = "missing " + lv.Missing
			s.Problems = append(s.Problems, fmt.Sprintf("%s: this node lacks its %s", who, lv.Missing))
		case unknown6:
			row.State = "IPv4 programmed, IPv6 unknown"
		case unknown4:
			row.State = "IPv6 programmed, IPv4 unknown"
		default:
			row.State = "programmed"
		}
		for _, p := range []*doctor.ProbeView{lv.Probe, lv.ProbeIPv6} {
			if p == nil {
				continue
			}
			s.Probed = true
			if p.Status == doctor.Fail {
				s.Problems = append(s.Problems, fmt.Sprintf("%s: %s", who, p.Message))
			}
		}
		s.Rows = append(s.Rows, row)
	}
	own := v.Own
	if !own.IsValid() {
		own = v.Own6 // an IPv6-only network
	}
	if own.IsValid() && !ownHeld && len(v.Leases) > 0 {
		s.Problems = append(s.Problems, fmt.Sprintf("this node's subnet %s has no lease: it expired or was deleted", own))
	}
	for _, p := range v.Stale {
		if n, ok := v.StaleNode[p]; ok {
			s.Problems = append(s.Problems, fmt.Sprintf("%s is routed but no lease holds it: Node %s has it as podCIDR but publishes no usable lease: its agent never published, or its annotations were removed or are unusable", p, n))
			continue
		}
		s.Problems = append(s.Problems, fmt.Sprintf("%s is routed but no lease holds it: its node's lease expired or was deleted", p))
	}
	s.Problems = append(s.Problems, fails...)
	if s.Problems == nil {
		s.Problems = []string{}
	}
	s.OK = len(s.Problems) == 0
	return s
}

// backendData shortens a lease's backend data for the table.
func backendData(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var d struct {
		VtepMAC   string
		PublicKey string
	}
	if json.Unmarshal(raw, &d) != nil {
		return "unparsable"
	}
	switch {
	case d.VtepMAC != "":
		return d.VtepMAC
	case d.PublicKey != "":
		return "key " + d.PublicKey[:min(8, len(d.PublicKey))] + "…"
	}
	return ""
}

// WriteText prints the header, the table and the problems.
func (s Status) WriteText(w io.Writer) error {
	var b strings.Builder
	line := func(name string, l Line) {
		if l.Message == "" {
			return
		}
		fmt.Fprintf(&b, "%-7s %-4s %s\n", name, l.Status, l.Message)
	}
	line("store", s.Store)
	line("config", s.Config)
	line("agent", s.Agent)
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	head := "NODE\tSUBNET\tPUBLIC IP\tBACKEND\tDATA\tRENEWED\tEXPIRES\tTHIS NODE"
	if s.Probed {
		head += "\tPROBE"
	}
	fmt.Fprintln(tw, head)
	for _, r := range s.Rows {
		node := r.Node
		if node == "" {
			node = r.Key
		}
		subnet := both(r.Subnet, r.IPv6Subnet)
		pub := both(r.PublicIP, r.PublicIPv6)
		renewed, expires := "-", "-"
		switch {
		case r.Reservation:
			expires = "reservation"
		case r.TTLKnown && r.Expired:
			expires = "expired"
		case r.TTLKnown:
			expires = dur(time.Duration(r.TTL))
			if r.Renewed > 0 {
				renewed = dur(time.Duration(r.Renewed)) + " ago"
			}
		}
		row := fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s", node, subnet, pub, dash(r.BackendType), dash(r.Data), renewed, expires, r.State)
		if s.Probed {
			var ps []string
			if r.Probe != nil {
				ps = append(ps, probeText(r.Probe))
			}
			if r.ProbeIPv6 != nil {
				p := probeText(r.ProbeIPv6)
				if r.Probe != nil || r.Subnet.IsValid() {
					p = "v6 " + p
				}
				ps = append(ps, p)
			}
			row += "\t" + dash(strings.Join(ps, "; "))
		}
		fmt.Fprintln(tw, row)
	}
	for _, p := range s.Stale {
		fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\tno lease\trouted, stale\n", dash(s.StaleNodes[p]), p)
	}
	_ = tw.Flush()
	if len(s.Problems) > 0 {
		b.WriteString("\n")
		for _, p := range s.Problems {
			fmt.Fprintf(&b, "FAIL  %s\n", p)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// probeText is a probe's cell: the round trip, or the verdict.
func probeText(p *doctor.ProbeView) string {
	if p.Status == doctor.OK {
		return fmt.Sprintf("%.2f ms", float64(time.Duration(p.RTT).Microseconds())/1000)
	}
	return p.Status.String() + ": " + p.Message
}

// WriteJSON prints the status as one JSON object.
func (s Status) WriteJSON(w io.Writer) error {
	if s.Rows == nil {
		s.Rows = []Row{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // dual-stack keys hold '&'
	return enc.Encode(s)
}

// both is a cell of a lease's IPv4 and IPv6 halves (subnets, public
// IPs): those it has, comma-separated, or "-".
func both[T interface {
	IsValid() bool
	String() string
}](v4, v6 T) string {
	var parts []string
	for _, x := range []T{v4, v6} {
		if x.IsValid() {
			parts = append(parts, x.String())
		}
	}
	return dash(strings.Join(parts, ","))
}

func dash(s string) string {
	if s == "" || s == "invalid Prefix" {
		return "-"
	}
	return s
}

// dur rounds d for a table: 23h59m, 4m10s, 12s.
func dur(d time.Duration) string {
	switch {
	case d >= time.Hour:
		return strings.TrimSuffix(d.Truncate(time.Minute).String(), "0s")
	case d >= time.Minute:
		return d.Truncate(time.Second).String()
	}
	return d.Round(time.Second).String()
}
