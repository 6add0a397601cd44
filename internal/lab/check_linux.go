package lab

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
)

// CheckOptions tune Check.
type CheckOptions struct {
	// Parallel bounds the pings in flight; default 8.
	Parallel int
	// NodeToPod adds a row per node: the node namespace pinging each pod.
	NodeToPod bool
	// IPv6 pings the pods' IPv6 addresses instead of their IPv4 ones.
	IPv6 bool
}

// Check pings every pod from every pod (and optionally from every node)
// over one family and returns the matrix. The error is about running the
// check; failed pings are in the matrix (Matrix.Failures).
func (l *Lab) Check(ctx context.Context, o CheckOptions) (Matrix, error) {
	if o.Parallel <= 0 {
		o.Parallel = 8
	}
	if _, err := exec.LookPath("ping"); err != nil {
		return Matrix{}, fmt.Errorf("check needs ping (iputils-ping; `make deps` installs it): %w", err)
	}
	pods := l.Pods()
	type src struct{ name, ns string }
	var srcs []src
	for _, p := range pods {
		srcs = append(srcs, src{p.Name, p.NS})
	}
	if o.NodeToPod {
		for _, n := range l.Nodes {
			if n.Unregistered {
				continue // not in the cluster: nothing routes from it
			}
			srcs = append(srcs, src{fmt.Sprintf("n%d", n.Index), n.NS})
		}
	}
	var from, to []string
	for _, s := range srcs {
		from = append(from, s.name)
	}
	fam := familyName(o.IPv6)
	for _, p := range pods {
		if !p.Addr(o.IPv6).IsValid() {
			return Matrix{}, fmt.Errorf("pod %s has no %s address (lab not fully up, or not %s?)", p.NS, fam, fam)
		}
		to = append(to, p.Name)
	}
	m := newMatrix(from, to)
	sem := make(chan struct{}, o.Parallel)
	var wg sync.WaitGroup
	for i, s := range srcs {
		for j, p := range pods {
			if s.ns == p.NS {
				m.Skip[i][j] = true
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					m.Errs[i][j] = ctx.Err().Error()
					return
				}
				defer func() { <-sem }()
				dst := p.Addr(o.IPv6).String()
				err := ping(ctx, s.ns, dst)
				if err != nil {
					// One retry: a first packet can race neighbour
					// resolution on a path nobody has used yet.
					err = ping(ctx, s.ns, dst)
				}
				m.OK[i][j] = err == nil
				if err != nil {
					m.Errs[i][j] = err.Error()
				}
			}()
		}
	}
	wg.Wait()
	return m, ctx.Err()
}

func ping(ctx context.Context, nsName, addr string) error {
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", nsName,
		"ping", "-n", "-q", "-c", "1", "-W", "1", addr).CombinedOutput()
	if err != nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		return fmt.Errorf("ping %s: %v: %s", addr, err, lines[len(lines)-1])
	}
	return nil
}
