package doctor

import (
	"fmt"

	"github.com/weft-net/weft/internal/agentflags"
)

// Settings returns the agent settings to diagnose with and says where they
// came from. With one weftd in this network namespace they are that
// weftd's, read from its command line and FLANNELD_* environment as it read
// them, with the weftd flags doctor's own command line gave (given) on
// top; doctor's environment is not read then. Otherwise (no weftd here, or
// several) they are given with doctor's environment (os.Environ's form)
// applied, as weftd would read them.
func Settings(given *agentflags.Flags, environ []string) (agentflags.Settings, string, error) {
	return settingsFrom("/proc", given, environ)
}

func settingsFrom(procRoot string, given *agentflags.Flags, environ []string) (agentflags.Settings, string, error) {
	procs, _ := scanProcs(procRoot, "weftd")
	var mine []Process
	for _, p := range procs {
		if p.SameNetNS && len(p.Args) > 0 {
			mine = append(mine, p)
		}
	}
	var note string
	if len(mine) == 1 {
		p := mine[0]
		af, err := agentflags.FromCommandLine(p.Args[1:], p.Env)
		if err == nil {
			if err = af.Override(given); err == nil {
				s, err := af.Settings()
				return s, fmt.Sprintf("weftd pid %d's command line and environment", p.PID), err
			}
		}
		note = fmt.Sprintf("cannot read the settings of weftd pid %d (%v): using doctor's own", p.PID, err)
	}
	given.ApplyEnv(environ)
	s, err := given.Settings()
	if note != "" {
		s.Warnings = append([]string{note}, s.Warnings...)
	}
	return s, "doctor's flags and environment", err
}
