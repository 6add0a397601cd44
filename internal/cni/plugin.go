package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weft-net/weft/internal/readyfile"
	"github.com/weft-net/weft/internal/subnetenv"
)

// Versions are the CNI spec versions the plugin speaks.
var Versions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// CodeCheckFailed is the error code of a CHECK that found the pod's network
// not as ADD left it (codes from 100 are the plugin's own, per the spec).
const CodeCheckFailed uint = 100

// Plugin implements the CNI commands. The zero value is ready to use.
type Plugin struct {
	// Exec runs delegates; nil means the real one (found in CNI_PATH).
	Exec invoke.Exec
	// TimingsFile, when set, is the file each ADD appends its Timing to
	// (see TimingsEnv).
	TimingsFile string
}

// Funcs is what skel.PluginMainFuncs dispatches to.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status}
}

// readEnv reads subnet.env, turning a missing file into the error an
// operator can act on.
func readEnv(path string, missingCode uint) (subnetenv.Env, *types.Error) {
	env, err := subnetenv.Read(path)
	if errors.Is(err, fs.ErrNotExist) {
		return env, types.NewError(missingCode,
			fmt.Sprintf("subnet file %s not found: is weftd running on this node?", path), "")
	}
	if err != nil {
		return env, types.NewError(types.ErrIOFailure,
			fmt.Sprintf("reading subnet file: %v", err), "")
	}
	return env, nil
}

// delegateError keeps a delegate's error code and says which step failed.
func delegateError(step string, err error) *types.Error {
	var te *types.Error
	if errors.As(err, &te) {
		return types.NewError(te.Code, step+": "+te.Msg, te.Details)
	}
	return types.NewError(types.ErrInternal, step+": "+err.Error(), "")
}

// Add renders the delegate config, saves it (before anything is created,
// so a DEL always finds it) and delegates ADD; when subnet.env allows pods
// BIG TCP, it raises the GSO limit of the interfaces the delegate made.
// When a step fails, the delegate's work is undone with a delegate DEL and
// the saved config removed: a failed ADD leaves nothing.
func (p *Plugin) Add(args *skel.CmdArgs) (err error) {
	sw := &stopwatch{}
	if p.TimingsFile != "" {
		sw = newStopwatch(p.TimingsFile, "ADD", args.ContainerID)
		defer func() { sw.write(err) }()
	}
	return p.add(args, sw)
}

func (p *Plugin) add(args *skel.CmdArgs, sw *stopwatch) error {
	ctx := context.Background()
	n, err := LoadNetConf(args.StdinData)
	if err != nil {
		return err
	}
	if err := n.checkDelegate(); err != nil {
		return err
	}
	sw.lap("config")
	env, terr := readEnv(n.SubnetFile, types.ErrTryAgainLater)
	if terr != nil {
		return terr
	}
	sw.lap("subnet.env")
	d, err := RenderDelegate(n, env)
	if err != nil {
		return err
	}
	conf, err := json.Marshal(d)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("encoding delegate config: %v", err), "")
	}
	typ := d["type"].(string) // checkDelegate or the default made it a string
	sw.lap("render")
	// A delegate that is not installed fails before anything is saved;
	// so does a missing IPAM plugin, which the in-process ADD would not
	// need but every DEL does.
	if err := findDelegates(d, args.Path); err != nil {
		return err
	}
	sw.lap("find delegate")
	if err := saveDelegate(n.DataDir, args.ContainerID, conf); err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	sw.lap("save config")
	// undo takes back what the delegate did before ADD failed. Should that
	// fail too, the saved config stays, so the runtime's DEL can finish the
	// job even once subnet.env is gone.
	undo := func(addErr *types.Error) error {
		if delErr := invoke.DelegateDel(ctx, typ, conf, p.Exec); delErr != nil {
			addErr.Details = fmt.Sprintf("cleanup by delegate DEL also failed: %v", delErr)
			return addErr
		}
		_ = removeDelegate(n.DataDir, args.ContainerID)
		return addErr
	}
	res, err := p.delegateAdd(ctx, n, d, conf, args, sw)
	if err != nil {
		return undo(delegateError("delegate "+typ+" ADD", err))
	}
	if env.GSOIPv4MaxSize > 0 {
		if err := raiseGSO(res, env.GSOIPv4MaxSize); err != nil {
			return undo(types.NewError(types.ErrInternal,
				fmt.Sprintf("setting gso_ipv4_max_size %d (BIG TCP, from %s): %v", env.GSOIPv4MaxSize, n.SubnetFile, err), ""))
		}
		sw.lap("gso")
	}
	if n.CNIVersion != "" {
		if res, err = res.GetAsVersion(n.CNIVersion); err != nil {
			return types.NewError(types.ErrIncompatibleCNIVersion,
				fmt.Sprintf("converting delegate result to %s: %v", n.CNIVersion, err), "")
		}
	}
	err = res.Print()
	sw.lap("result")
	return err
}

// findDelegates reports a delegate (rendered config d) or its IPAM plugin
// missing from cniPath.
func findDelegates(d map[string]any, cniPath string) *types.Error {
	ipamType, _ := d["ipam"].(map[string]any)["type"].(string)
	for _, plugin := range []string{d["type"].(string), ipamType} {
		if _, err := invoke.FindInPath(plugin, filepath.SplitList(cniPath)); err != nil {
			return types.NewError(types.ErrPluginNotAvailable,
				fmt.Sprintf("delegate plugin %q is not installed: %v", plugin, err), "install the reference CNI plugins (bridge, host-local) into CNI_PATH")
		}
	}
	return nil
}

// delegateAdd runs the delegate's ADD: in process for the default bridge
// with host-local (inProcessBridge) unless the config asks for the binary
// or Exec is a runtime's or a test's own; else through Exec.
func (p *Plugin) delegateAdd(ctx context.Context, n *NetConf, d map[string]any, conf []byte, args *skel.CmdArgs, sw *stopwatch) (types.Result, error) {
	typ := d["type"].(string)
	if p.Exec == nil && !n.ExecDelegate {
		if c, ok := inProcessBridge(d, conf, args.Args); ok {
			// A failure leaves what the bridge plugin's DEL takes back
			// (the caller's undo), as its own ADD would.
			res, err := addInProcess(args, c, sw)
			if err != nil {
				return nil, err
			}
			return res, nil
		}
	}
	res, err := invoke.DelegateAdd(ctx, typ, conf, p.Exec)
	sw.lap("delegate " + typ)
	return res, err
}

// savedDelegate reads the delegate config ADD saved for the container,
// with its type and MTU. A config never saved (or gone, or empty) is
// fs.ErrNotExist, for the caller to judge; any other failure is the CNI
// error to return.
func savedDelegate(n *NetConf, containerID string) ([]byte, delegated, error) {
	conf, err := loadDelegate(n.DataDir, containerID)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, delegated{}, err
	}
	if err == nil && len(bytes.Trim(conf, "\x00")) == 0 {
		// What a crash right after ADD can leave of it (saveDelegate
		// does not sync): ext4 an empty file, XFS its length of NULs,
		// neither ever a config. As good as none; anything else that
		// does not parse stays an error.
		return nil, delegated{}, fmt.Errorf("saved delegate config for %s is empty: %w", containerID, fs.ErrNotExist)
	}
	if err != nil {
		return nil, delegated{}, types.NewError(types.ErrIOFailure, fmt.Sprintf("reading saved delegate config: %v", err), "")
	}
	d, err := parseDelegated(conf)
	if err != nil {
		return nil, delegated{}, types.NewError(types.ErrDecodingFailure,
			fmt.Sprintf("saved delegate config for %s: %v", containerID, err), "")
	}
	return conf, d, nil
}

// Del delegates DEL with the config ADD saved, then removes it. Without a
// saved config (ADD saves it before creating anything, so the container was
// never added or is already deleted, unless the data dir was lost) it
// renders the config again from subnet.env and delegates DEL on a
// best-effort basis, as flannel's DEL would have nothing to do: DEL of
// something unknown succeeds.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	ctx := context.Background()
	n, err := LoadNetConf(args.StdinData)
	if err != nil {
		return err
	}
	conf, d, err := savedDelegate(n, args.ContainerID)
	if errors.Is(err, fs.ErrNotExist) {
		if err := p.delUnsaved(ctx, n); err != nil {
			fmt.Fprintf(os.Stderr, "weft-cni: DEL %s without saved config: %v (ignored)\n", args.ContainerID, err)
		}
		// An empty one goes too.
		if err := removeDelegate(n.DataDir, args.ContainerID); err != nil {
			return types.NewError(types.ErrIOFailure, err.Error(), "")
		}
		return nil
	}
	if err != nil {
		return err
	}
	if err := invoke.DelegateDel(ctx, d.Type, conf, p.Exec); err != nil {
		// Keep the saved config, so the runtime's retry can finish the job.
		return delegateError("delegate "+d.Type+" DEL", err)
	}
	if err := removeDelegate(n.DataDir, args.ContainerID); err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	return nil
}

func (p *Plugin) delUnsaved(ctx context.Context, n *NetConf) error {
	env, err := subnetenv.Read(n.SubnetFile)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // nothing to render from, nothing to undo
		}
		return err
	}
	d, err := RenderDelegate(n, env)
	if err != nil {
		return err // a config ADD refuses created nothing
	}
	conf, err := json.Marshal(d)
	if err != nil {
		return err
	}
	return invoke.DelegateDel(ctx, d["type"].(string), conf, p.Exec)
}

// Check verifies the pod itself (interface up, address, MTU, routes), so a
// failure names what is missing, then lets the delegate check its part.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	ctx := context.Background()
	n, err := LoadNetConf(args.StdinData)
	if err != nil {
		return err
	}
	conf, d, err := savedDelegate(n, args.ContainerID)
	if errors.Is(err, fs.ErrNotExist) {
		return types.NewError(types.ErrUnknownContainer,
			fmt.Sprintf("container %s unknown: no saved delegate config in %s (was ADD run on this node?)", args.ContainerID, n.DataDir), "")
	}
	if err != nil {
		return err
	}
	if n.RawPrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult in the network config", "")
	}
	rawPrev := n.RawPrevResult // ParsePrevResult consumes it
	if err := version.ParsePrevResult(&n.NetConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("parsing prevResult: %v", err), "")
	}
	prev, err := current.NewResultFromResult(n.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("converting prevResult: %v", err), "")
	}
	routes, err := d.routeDsts()
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	want := podExpect{IfName: args.IfName, MTU: d.MTU, Addrs: expectFromResult(prev, args.IfName), Routes: routes}
	got, err := inspectPod(args.Netns, args.IfName)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("inspecting pod network: %v", err), "")
	}
	if err := want.compare(args.Netns, got); err != nil {
		return types.NewError(CodeCheckFailed, err.Error(), "")
	}

	// The delegate checks with the config it was added with, and with the
	// runtime's prevResult in the runtime's version.
	var dconf map[string]any
	if err := json.Unmarshal(conf, &dconf); err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("saved delegate config: %v", err), "")
	}
	dconf["prevResult"] = rawPrev
	dconf["cniVersion"] = n.CNIVersion
	if n.RuntimeConfig != nil {
		dconf["runtimeConfig"] = n.RuntimeConfig
	}
	checkConf, err := json.Marshal(dconf)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("encoding delegate config: %v", err), "")
	}
	if err := invoke.DelegateCheck(ctx, d.Type, checkConf, p.Exec); err != nil {
		return delegateError("delegate "+d.Type+" CHECK", err)
	}
	return nil
}

// Status reports the plugin ready when subnet.env exists and parses (the
// agent writes it once it holds a lease and its backend is up), the delegate
// config renders, the delegate and its IPAM plugin are in CNI_PATH, and the
// agent's readiness marker is fresh (the agent is running and ready).
func (p *Plugin) Status(args *skel.CmdArgs) error {
	n, err := LoadNetConf(args.StdinData)
	if err != nil {
		return err
	}
	env, terr := readEnv(n.SubnetFile, types.ErrPluginNotAvailable)
	if terr != nil {
		// A file that does not parse leaves the node as unready as none.
		terr.Code = types.ErrPluginNotAvailable
		return terr
	}
	d, err := RenderDelegate(n, env)
	if err != nil {
		return err
	}
	// The delegate and its IPAM must be installed for an ADD to work.
	if err := findDelegates(d, args.Path); err != nil {
		return err
	}
	if err := readyfile.Check(n.ReadyFile, time.Now()); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "weftd is not ready: "+err.Error(), "")
	}
	return nil
}
