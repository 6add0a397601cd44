package kubecp

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// process is one running control-plane binary.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	logFrom int64 // where this run's output starts in the (appended) log

	done chan struct{} // closed when the process has exited and been reaped
	err  error         // Wait's result, once done is closed
}

// startProcess starts cmd with its output appended to logPath, in a process
// group of its own (or the session the caller's hook asked for), so that
// stop reaches whatever it forks.
func startProcess(name string, cmd *exec.Cmd, logPath string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: log: %w", name, err)
	}
	defer logf.Close() // the child has its own copy once started
	from, err := logf.Seek(0, 2)
	if err != nil {
		return nil, fmt.Errorf("%s: log: %w", name, err)
	}
	fmt.Fprintf(logf, "=== kubecp %s: %s\n", time.Now().Format(time.RFC3339), strings.Join(cmd.Args, " "))
	cmd.Stdout, cmd.Stderr = logf, logf
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if !cmd.SysProcAttr.Setsid {
		cmd.SysProcAttr.Setpgid, cmd.SysProcAttr.Pgid = true, 0
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, logFrom: from, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// A hook may set Pdeathsig (tests do, so that a killed test
		// binary leaves no API server behind). The kernel sends it when
		// the thread that forked the child ends, not the process, and Go
		// ends threads at will: this thread stays locked, so alive, until
		// the child has exited.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitError describes how the process ended, with the end of its log.
func (p *process) exitError() error {
	return fmt.Errorf("%s exited (%v); end of %s:\n%s", p.name, p.err, p.logPath, p.logTail(30))
}

// stop sends SIGTERM to the process group, then SIGKILL after grace, and
// returns once the process has been reaped. What is left in its group is
// killed too.
func (p *process) stop(grace time.Duration) error {
	if p.exited() {
		// Long gone, perhaps: its pid may name another group by now.
		return nil
	}
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.signal(syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			return fmt.Errorf("%s (pid %d) still runs 30s after SIGKILL", p.name, p.pid())
		}
	}
	// The group outlives its leader while a member lives, and the kernel
	// does not hand out its id as a pid meanwhile: this reaches only what
	// the process left behind, if anything.
	if err := syscall.Kill(-p.pid(), syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("%s: kill process group %d: %w", p.name, p.pid(), err)
	}
	return nil
}

func (p *process) signal(sig syscall.Signal) {
	// ESRCH: it has exited meanwhile, which stop sees on done.
	_ = syscall.Kill(-p.pid(), sig)
}

// logTail is the last n lines this run wrote to the log.
func (p *process) logTail(n int) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	if p.logFrom <= int64(len(data)) {
		data = data[p.logFrom:]
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
