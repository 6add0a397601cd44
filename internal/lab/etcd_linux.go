package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lease/etcdstore"
	"github.com/weft-net/weft/internal/pki"
)

// etcdReadyTimeout bounds the wait for members to serve: a member of a
// cluster serves once a majority is up, which on a loaded machine takes a
// few elections.
const etcdReadyTimeout = 60 * time.Second

// startEtcd starts every member of the lab's etcd and waits until each
// serves; with EtcdTLS it first makes the certificates and at the end
// turns authentication on.
func (l *Lab) startEtcd(ctx context.Context) error {
	if l.EtcdTLS != nil {
		if err := l.writeEtcdPKI(); err != nil {
			return fmt.Errorf("etcd certificates: %w", err)
		}
	}
	var all []int
	for _, m := range l.EtcdMembers {
		all = append(all, m.Index)
	}
	if err := l.StartEtcdMembers(ctx, all...); err != nil {
		return err
	}
	if l.EtcdTLS != nil {
		return l.enableEtcdAuth(ctx)
	}
	return nil
}

// writeEtcdPKI makes the lab's CA, one certificate every member serves
// and presents to its peers (for the control namespace's addresses), and
// the agents' client certificate.
func (l *Lab) writeEtcdPKI() error {
	t := l.EtcdTLS
	dir := filepath.Dir(t.CA)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := pki.LoadOrCreateCA(t.CA, filepath.Join(dir, "ca.key"), "weft lab "+l.Name+" etcd CA")
	if err != nil {
		return err
	}
	ips := []netip.Addr{netip.MustParseAddr(ctlAddr), netip.MustParseAddr("127.0.0.1")}
	cert, key, err := ca.PeerCert("etcd", ips, []string{"localhost"})
	if err != nil {
		return err
	}
	if err := pki.WritePair(t.ServerCert, t.ServerKey, cert, key); err != nil {
		return err
	}
	if cert, key, err = ca.ClientCert(t.User, nil); err != nil {
		return err
	}
	return pki.WritePair(t.ClientCert, t.ClientKey, cert, key)
}

// etcdArgs is member m's `weft etcd` command line.
func (l *Lab) etcdArgs(m EtcdMember) []string {
	var cluster []string
	for _, o := range l.EtcdMembers {
		cluster = append(cluster, o.Name+"="+o.PeerURL)
	}
	args := []string{"etcd",
		"--name", m.Name,
		"--data-dir", m.DataDir,
		"--listen-client-urls", m.ClientURL,
		"--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.PeerURL,
		"--initial-advertise-peer-urls", m.PeerURL,
		"--initial-cluster", strings.Join(cluster, ","),
		"--initial-cluster-token", l.Name,
	}
	if t := l.EtcdTLS; t != nil {
		args = append(args,
			"--cert-file", t.ServerCert, "--key-file", t.ServerKey, "--trusted-ca-file", t.CA, "--client-cert-auth",
			"--peer-cert-file", t.ServerCert, "--peer-key-file", t.ServerKey, "--peer-trusted-ca-file", t.CA, "--peer-client-cert-auth")
	}
	// With the Kubernetes store, etcd only backs the API server; the
	// agents read net-conf.json.
	if l.Store != StoreKube {
		args = append(args, "--network-config", l.networkConfig())
	}
	return args
}

func (l *Lab) etcdMember(i int) EtcdMember {
	if i < 1 || i > len(l.EtcdMembers) {
		panic(fmt.Sprintf("lab %s has no etcd member %d", l.Name, i))
	}
	return l.EtcdMembers[i-1]
}

// StartEtcdMembers starts etcd members (1-based), detached, on the data
// they had, and waits until each serves with a leader: a majority of the
// cluster must be up by then.
func (l *Lab) StartEtcdMembers(ctx context.Context, members ...int) error {
	pids := make([]int, len(members))
	for k, i := range members {
		m := l.etcdMember(i)
		pid, err := startDetached(l.ControlNS, filepath.Join(l.BinDir, "weft"), l.etcdArgs(m), nil, m.Log)
		if err != nil {
			return fmt.Errorf("starting etcd member %d: %w", i, err)
		}
		if err := writePID(m.PIDFile, pid); err != nil {
			return err
		}
		pids[k] = pid
		l.log.Info("started etcd", "member", m.Name, "endpoint", m.ClientURL, "pid", pid)
	}
	wctx, cancel := context.WithTimeout(ctx, etcdReadyTimeout)
	defer cancel()
	for k, i := range members {
		m := l.etcdMember(i)
		err := poll(wctx, 100*time.Millisecond, func() error {
			if !alive(pids[k]) {
				return permanent(fmt.Errorf("etcd member %s exited; see %s:\n%s", m.Name, m.Log, tail(m.Log, 15)))
			}
			return l.memberServes(wctx, m)
		})
		if err != nil {
			return fmt.Errorf("etcd member %s: %w", m.Name, err)
		}
	}
	return nil
}

// memberServes asks member m alone for its status.
func (l *Lab) memberServes(ctx context.Context, m EtcdMember) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	cli, err := l.storeClient(ctx, []string{m.ClientURL})
	if err != nil {
		return err
	}
	defer cli.Close()
	resp, err := cli.Status(ctx, m.ClientURL)
	if err != nil {
		return err
	}
	if resp.Leader == 0 {
		return errors.New("no leader")
	}
	return nil
}

// KillEtcdMember kills etcd member i (1-based) with SIGKILL, as a crash
// or a machine lost would; its data stays for StartEtcdMembers.
func (l *Lab) KillEtcdMember(ctx context.Context, i int) error {
	m := l.etcdMember(i)
	pid, err := readPID(m.PIDFile)
	if err != nil {
		return fmt.Errorf("etcd member %d: %w", i, err)
	}
	if !inNamespace(pid, l.ControlNS) {
		return nil // already gone
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("etcd member %d: %w", i, err)
	}
	if err := waitGone(ctx, []int{pid}, 10*time.Second); err != nil {
		return fmt.Errorf("etcd member %d: %w", i, err)
	}
	_ = os.Remove(m.PIDFile)
	l.log.Info("killed etcd", "member", m.Name, "pid", pid)
	return nil
}

// enableEtcdAuth turns etcd's authentication on, as an operator secures
// a cluster: root, a role for the network prefix, a user for the agents
// with that role. The config is seeded before, by the members.
func (l *Lab) enableEtcdAuth(ctx context.Context) error {
	t := l.EtcdTLS
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cli, err := l.StoreClient(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	key := etcdstore.New(cli, etcdstore.Options{}).ConfigKey()
	// The members write the config right after they serve; once auth is
	// on they cannot.
	err = poll(ctx, 50*time.Millisecond, func() error {
		resp, err := cli.Get(ctx, key)
		if err == nil && len(resp.Kvs) == 0 {
			err = fmt.Errorf("no network config at %s yet", key)
		}
		return err
	})
	if err != nil {
		return err
	}
	prefix := etcdstore.DefaultPrefix + "/"
	steps := []struct {
		what string
		do   func() error
	}{
		{"add user root", func() error { _, err := cli.UserAdd(ctx, "root", t.RootPassword); return err }},
		{"grant root", func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err }},
		{"add role " + t.User, func() error { _, err := cli.RoleAdd(ctx, t.User); return err }},
		{"grant " + prefix, func() error {
			_, err := cli.RoleGrantPermission(ctx, t.User, prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		}},
		{"add user " + t.User, func() error { _, err := cli.UserAdd(ctx, t.User, t.Password); return err }},
		{"grant user " + t.User, func() error { _, err := cli.UserGrantRole(ctx, t.User, t.User); return err }},
		{"enable auth", func() error { _, err := cli.AuthEnable(ctx); return err }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("etcd auth: %s: %w", s.what, err)
		}
	}
	l.log.Info("etcd auth enabled", "user", t.User, "prefix", prefix)
	return nil
}

// storeClient is a client for endpoints, dialed from the control
// namespace, as root with EtcdTLS.
func (l *Lab) storeClient(ctx context.Context, endpoints []string) (*clientv3.Client, error) {
	o := etcdstore.ClientOptions{Endpoints: endpoints}
	if t := l.EtcdTLS; t != nil {
		o.CertFile, o.KeyFile, o.CAFile = t.ClientCert, t.ClientKey, t.CA
		o.Username, o.Password = "root", t.RootPassword
	}
	dial := dialInNS(l.ControlNS)
	cli, err := etcdstore.Connect(ctx, o, func(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, "tcp", addr) })
	if err != nil {
		return nil, fmt.Errorf("lab %s: %w", l.Name, err)
	}
	return cli, nil
}
