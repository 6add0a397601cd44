package buildinfo

import (
	"runtime/debug"
	"testing"
)

func TestVersion(t *testing.T) {
	if got := Version("v0.3.0-2-gabcdef0"); got != "v0.3.0-2-gabcdef0" {
		t.Errorf("linked version: got %q", got)
	}
	rev := debug.BuildSetting{Key: "vcs.revision", Value: "49fb193d2c41a8f1e0b7c6d5e4f3a2b1c0d9e8f7"}
	for _, tc := range []struct {
		name string
		bi   debug.BuildInfo
		want string
	}{
		{"tagged module", debug.BuildInfo{Main: debug.Module{Version: "v0.3.0"}, Settings: []debug.BuildSetting{rev}}, "v0.3.0"},
		{"pseudo-version", debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20260101120000-49fb193d2c41+dirty"}}, "v0.0.0-20260101120000-49fb193d2c41+dirty"},
		{"devel with commit", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{rev}}, "49fb193d2c41"},
		{"devel, dirty", debug.BuildInfo{Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{rev, {Key: "vcs.modified", Value: "true"}}}, "49fb193d2c41-dirty"},
		{"nothing known", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "(devel)"},
	} {
		if got := fromBuildInfo(&tc.bi); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}
