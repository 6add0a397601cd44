package doctor

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/weft-net/weft/internal/agentflags"
	"github.com/weft-net/weft/internal/agentopts"
)

// ---- 2. agent ----

func (e *eval) agent() {
	a := e.f.Agent
	var here, elsewhere []string
	var mine []Process
	for _, p := range a.Procs {
		if p.SameNetNS {
			here = append(here, fmt.Sprint(p.PID))
			mine = append(mine, p)
		} else {
			elsewhere = append(elsewhere, fmt.Sprint(p.PID))
		}
	}
	others := ""
	if len(elsewhere) > 0 {
		others = fmt.Sprintf(" (%s in other network namespaces: pid %s)", plural(len(elsewhere), "weftd", "weftds"), strings.Join(firstN(elsewhere), ", "))
	}
	switch {
	case a.ScanErr != nil && len(a.Procs) == 0:
		e.add("agent", Warn, fmt.Sprintf("cannot look for weftd: %v", a.ScanErr), "run doctor as root")
	case len(mine) == 0:
		e.add("agent", Fail, "no weftd process in this network namespace"+others,
			"start weftd (systemd unit or DaemonSet pod); to diagnose a lab node run doctor inside it: ip netns exec <node-ns> weft doctor, or weft lab doctor <node>")
	case len(mine) > 1:
		e.add("agent", Warn, fmt.Sprintf("%d weftd processes in this network namespace: pid %s", len(mine), strings.Join(here, ", ")),
			"two agents fight over one node's datapath and lease: stop all but one")
	default:
		p := mine[0]
		msg := fmt.Sprintf("weftd pid %d runs in this network namespace", p.PID) + others
		if e.f.SettingsFrom != "" {
			msg += "; settings from " + e.f.SettingsFrom
		}
		if diffs := settingsDiff(e.f.Options, p); len(diffs) > 0 {
			e.add("agent", Warn, msg+", but with other settings than doctor was given",
				"run weft doctor without weftd's flags: it then reads those of the weftd running here", diffs...)
		} else {
			e.add("agent", OK, msg, "")
		}
	}
	e.health()
	switch {
	case a.MarkerErr != nil:
		e.add("ready-marker", Fail, a.MarkerErr.Error(),
			"the CNI plugin refuses new pods (STATUS) until weftd vouches for the node again: check weftd's log")
	case len(mine) == 0 && a.ScanErr == nil:
		e.add("ready-marker", Warn, a.MarkerPath+" is fresh, but no weftd runs here: it goes stale within a few resync periods",
			"until then the CNI plugin still accepts pods on this node: start weftd")
	default:
		e.add("ready-marker", OK, a.MarkerPath+" is fresh", "")
	}
}

// settingsDiff lists where the agent's settings differ from doctor's, in
// what doctor checks with them.
func settingsDiff(doc agentopts.Options, p Process) []string {
	if len(p.Args) == 0 {
		return nil
	}
	af, err := agentflags.FromCommandLine(p.Args[1:], p.Env)
	if err != nil {
		return []string{fmt.Sprintf("cannot read weftd's command line: %v", err)}
	}
	s, err := af.Settings()
	if err != nil {
		return []string{fmt.Sprintf("cannot read weftd's settings: %v", err)}
	}
	ag := s.Options
	var out []string
	cmp := func(name string, agent, doctor any) {
		a, d := fmt.Sprint(agent), fmt.Sprint(doctor)
		if a != d {
			out = append(out, fmt.Sprintf("--%s: weftd has %q, doctor %q", name, a, d))
		}
	}
	if !ag.KubeSubnetMgr || !doc.KubeSubnetMgr { // etcd is not used with the Kubernetes store
		cmp("etcd-endpoints", strings.Join(ag.Etcd.Endpoints, ","), strings.Join(doc.Etcd.Endpoints, ","))
		cmp("etcd-prefix", ag.EtcdPrefix, doc.EtcdPrefix)
	}
	cmp("kube-subnet-mgr", ag.KubeSubnetMgr, doc.KubeSubnetMgr)
	if ag.KubeSubnetMgr && doc.KubeSubnetMgr {
		cmp("kube-api-url", ag.KubeAPIURL, doc.KubeAPIURL)
		cmp("kubeconfig-file", ag.KubeconfigFile, doc.KubeconfigFile)
		cmp("kube-annotation-prefix", ag.KubeAnnotationPrefix, doc.KubeAnnotationPrefix)
		cmp("net-config-path", ag.NetConfigPath, doc.NetConfigPath)
	}
	cmp("subnet-file", ag.SubnetFile, doc.SubnetFile)
	cmp("net-config-file", ag.NetConfigFile, doc.NetConfigFile)
	cmp("healthz-ip", ag.HealthzIP, doc.HealthzIP)
	cmp("healthz-port", ag.HealthzPort, doc.HealthzPort)
	cmp("iface", strings.Join(ag.Iface.Ifaces, ","), strings.Join(doc.Iface.Ifaces, ","))
	cmp("iface-regex", strings.Join(ag.Iface.Regexes, ","), strings.Join(doc.Iface.Regexes, ","))
	cmp("iface-can-reach", ag.Iface.CanReach, doc.Iface.CanReach)
	cmp("public-ip", ag.Iface.PublicIP, doc.Iface.PublicIP)
	cmp("public-ipv6", ag.Iface.PublicIPv6, doc.Iface.PublicIPv6)
	cmp("subnet-lease-renew-margin", ag.RenewMargin, doc.RenewMargin)
	cmp("ip-masq-fully-random-disable", ag.IPMasqFullyRandomDisable, doc.IPMasqFullyRandomDisable)
	return out
}

func (e *eval) health() {
	a := e.f.Agent
	if a.Healthz == nil && a.Readyz == nil {
		e.add("readyz", Skip, "no --healthz-port: the health server is not checked", "")
		return
	}
	e.healthGET("healthz", a.Healthz, "weftd's loop is stuck: see its log; restarting it is safe (the datapath stays)")
	e.healthGET("readyz", a.Readyz, "weftd is not ready: see its log for why (no lease, config, backend error)")
}

// healthGET judges one GET of the health server (nil: not made); notOK is
// the hint for an answer other than 200.
func (e *eval) healthGET(check string, p *HTTPProbe, notOK string) {
	switch {
	case p == nil:
	case p.Err != nil:
		e.add(check, Fail, fmt.Sprintf("GET %s: %v", p.URL, p.Err),
			fmt.Sprintf("is weftd serving health on %s:%d (--healthz-ip, --healthz-port)?", e.f.Options.HealthzIP, e.f.Options.HealthzPort))
	case p.Code != http.StatusOK:
		e.add(check, Fail, fmt.Sprintf("GET %s: %d %s", p.URL, p.Code, strings.TrimSpace(p.Body)), notOK)
	default:
		e.add(check, OK, fmt.Sprintf("GET %s: %s", p.URL, strings.TrimSpace(p.Body)), "")
	}
}
