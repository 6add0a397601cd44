// Package buildinfo says which build of weft is running, for `weft
// version`, `weftd --version` and the weft_info metric.
package buildinfo

import "runtime/debug"

// Version is linked when it is set, as the Makefile does (-ldflags
// "-X main.version=$(git describe --tags --always --dirty)"); else what the
// Go toolchain recorded: the module version (a tag, or a pseudo-version
// from the commit, with +dirty for uncommitted changes), else the VCS
// commit, else "(devel)".
func Version(linked string) string {
	if linked != "" {
		return linked
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(devel)"
	}
	return fromBuildInfo(bi)
}

func fromBuildInfo(bi *debug.BuildInfo) string {
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "(devel)"
	}
	rev = rev[:min(len(rev), 12)]
	if dirty {
		rev += "-dirty"
	}
	return rev
}
