package cni

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestReferencePluginsMakefile holds the Makefile's CNI_PLUGINS, which
// builds the plugins, to the list the lab and the tests wire pods with.
func TestReferencePluginsMakefile(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^CNI_PLUGINS\s*:=\s*(.*)$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("Makefile has no CNI_PLUGINS")
	}
	var got []string
	for _, f := range strings.Fields(string(m[1])) {
		got = append(got, "plugins/"+f)
	}
	if !slices.Equal(got, ReferencePlugins) {
		t.Errorf("Makefile CNI_PLUGINS %v, want %v", got, ReferencePlugins)
	}
	if names := ReferencePluginNames(); !slices.Equal(names, []string{"bridge", "host-local", "portmap", "loopback"}) {
		t.Errorf("names %v", names)
	}
}
