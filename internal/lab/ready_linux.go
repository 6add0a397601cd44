package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/subnetenv"
)

// readyPath is the agent's readiness endpoint.
const readyPath = "/readyz"

// WaitReady waits until every node's agent has written its subnet file and
// answers readyz, and every node has a route to every other node's subnet.
func (l *Lab) WaitReady(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, len(l.Nodes))
	for i := range l.Nodes {
		if l.Nodes[i].Unregistered {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = l.waitAgent(ctx, &l.Nodes[i])
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for i := range l.Nodes {
		if l.Nodes[i].Unregistered {
			continue
		}
		if err := l.waitRoutes(ctx, &l.Nodes[i]); err != nil {
			return err
		}
	}
	return l.save()
}

// waitNode waits for one node, as after an agent restart.
func (l *Lab) waitNode(ctx context.Context, n *Node) error {
	if err := l.waitAgent(ctx, n); err != nil {
		return err
	}
	if err := l.waitRoutes(ctx, n); err != nil {
		return err
	}
	return l.save()
}

// waitAgent waits for the subnet file and readyz of node n.
func (l *Lab) waitAgent(ctx context.Context, n *Node) error {
	pid, err := readPID(n.PIDFile)
	if err != nil {
		return fmt.Errorf("node %d: %w", n.Index, err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(healthzPort))
	err = poll(ctx, 100*time.Millisecond, func() error {
		// alive, not inNamespace: until `ip netns exec` has switched
		// namespaces and exec'd weftd, the pid is in the root namespace.
		if !alive(pid) {
			return permanent(fmt.Errorf("weftd exited; last lines of %s:\n%s", n.Log, tail(n.Log, 20)))
		}
		env, err := subnetenv.Read(n.SubnetFile)
		if err != nil {
			return err
		}
		code, body, err := httpGetInNS(ctx, n.NS, addr, readyPath, 512)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("%s: %d %s", readyPath, code, body)
		}
		if l.HasIPv6() && !env.IPv6Subnet.IsValid() {
			return fmt.Errorf("%s has no FLANNEL_IPV6_SUBNET", n.SubnetFile)
		}
		n.Subnet, n.Subnet6 = env.Subnet, env.IPv6Subnet
		return nil
	})
	if err != nil {
		return fmt.Errorf("node %d (%s) not ready: %w", n.Index, n.NS, err)
	}
	l.log.Info("node ready", "node", n.Index, "subnet", n.Subnet, "subnet6", n.Subnet6)
	return nil
}

// waitRoutes waits until node n routes every other node's subnet (or, for
// udp and wireguard, the whole network of each family) into the fabric.
func (l *Lab) waitRoutes(ctx context.Context, n *Node) error {
	var want []netip.Prefix
	if l.Backend == config.BackendUDP || l.Backend == config.BackendWireGuard {
		if l.HasIPv4() {
			want = append(want, netip.MustParsePrefix(l.Network).Masked())
		}
		if l.HasIPv6() {
			want = append(want, netip.MustParsePrefix(l.IPv6Network).Masked())
		}
	} else {
		for _, o := range l.Nodes {
			if o.Index == n.Index || o.Unregistered {
				continue
			}
			for _, sn := range []netip.Prefix{o.Subnet, o.Subnet6} {
				if sn.IsValid() {
					want = append(want, sn.Masked())
				}
			}
		}
	}
	err := poll(ctx, 100*time.Millisecond, func() error {
		have, err := routeDsts(ctx, n.NS)
		if err != nil {
			return err
		}
		for _, w := range want {
			if !have[w] {
				return fmt.Errorf("no route to %s yet", w)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("node %d (%s): %w; last lines of %s:\n%s", n.Index, n.NS, err, n.Log, tail(n.Log, 10))
	}
	return nil
}

// routeDsts returns the destinations of the main routing tables (IPv4 and
// IPv6) of a namespace.
func routeDsts(ctx context.Context, name string) (map[netip.Prefix]bool, error) {
	have := map[netip.Prefix]bool{}
	for _, fam := range []string{"-4", "-6"} {
		out, err := ipOutput(ctx, "-n", name, "-j", fam, "route", "show")
		if err != nil {
			return nil, err
		}
		var routes []struct {
			Dst string `json:"dst"`
		}
		if err := json.Unmarshal(out, &routes); err != nil {
			return nil, fmt.Errorf("parsing routes of %s: %w", name, err)
		}
		for _, r := range routes {
			if p, err := netip.ParsePrefix(r.Dst); err == nil {
				have[p.Masked()] = true
			} else if a, err := netip.ParseAddr(r.Dst); err == nil {
				have[netip.PrefixFrom(a, a.BitLen())] = true
			}
		}
	}
	return have, nil
}

// httpGetInNS makes one HTTP GET to addr from inside namespace name. The
// socket is created on a thread switched into the namespace; once created it
// belongs there, so the rest runs on any thread. (http.Client would dial on
// another goroutine, in the wrong namespace.)
// httpGetInNS GETs path from addr inside namespace name and returns the
// status and up to limit bytes of the body.
func httpGetInNS(ctx context.Context, name, addr, path string, limit int64) (int, string, error) {
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	conn, err := dialInNS(name)(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return 0, "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return 0, "", err
	}
	req.Close = true
	if err := req.Write(conn); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, limit))
	return resp.StatusCode, string(body), nil
}

func ipOutput(ctx context.Context, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, "ip", args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("ip %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}
