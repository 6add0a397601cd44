#!/usr/bin/env bash
# Builds a real Kubernetes control plane (kube-apiserver,
# kube-controller-manager, kubectl) from the Go module proxy, for the tests
# and the lab's --store kube. The binaries are cached under
# $WEFT_CACHE/kube/<version>/ (default ~/.cache/weft), so only the first run
# builds: about 10-15 minutes on 2 cores from empty Go caches. Concurrent
# runs wait for one build.
#
# The version follows the client-go that go.mod requires (v0.X.Y ->
# k8s.io/kubernetes v1.X.Y), so that the server and weft's client agree.
# k8s.io/kubernetes cannot be required as it is: its go.mod replaces every
# k8s.io staging module with a directory of its own repository, which a
# module outside it must replace with the published v0.X.Y instead.
#
# Prints the directory that holds the binaries as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
client=${KUBE_CLIENT_VERSION:-}
[ -n "$client" ] || client=$($GO list -m -f '{{.Version}}' k8s.io/client-go 2>/dev/null || true)
if [ -z "$client" ]; then
	echo "kube-bins: k8s.io/client-go is not in go.mod" >&2
	exit 1
fi
staging=$client                     # v0.37.2
kube=v1.${client#v0.}               # v1.37.2
cache=${WEFT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weft}
out=$cache/kube/$kube
bins=(kube-apiserver kube-controller-manager kubectl)

# Built, and stamped with the version (an older run of this script left
# binaries that called themselves v0.0.0-master).
have() {
	for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done
	[ "$("$out/kube-apiserver" --version 2>/dev/null)" = "Kubernetes $kube" ]
}
if have; then
	echo "$out"
	exit 0
fi

# One build at a time: a second run (two `make test` at once) waits for the
# first and then finds the binaries in the cache.
mkdir -p "$cache/kube"
exec 9>"$cache/kube/.lock"
if ! flock -n 9; then
	echo "kube-bins: another build of $kube is under way; waiting for it" >&2
	flock 9
fi
if have; then
	echo "$out"
	exit 0
fi

echo "kube-bins: building ${bins[*]} $kube from the module proxy into $out (the first time takes minutes)" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
$GO mod init weft.local/kubebins >/dev/null 2>&1
modfile=$($GO mod download -json "k8s.io/kubernetes@$kube" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
if [ ! -f "$modfile" ]; then
	echo "kube-bins: cannot download k8s.io/kubernetes@$kube" >&2
	exit 1
fi
{
	echo "require k8s.io/kubernetes $kube"
	echo "replace ("
	sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 '"$staging"'#p' "$modfile"
	echo ")"
} >>go.mod
goversion=$(sed -n 's/^go //p' "$modfile")
$GO mod edit -go="$goversion"
echo "kube-bins: resolving modules" >&2
$GO mod tidy -e >/dev/null 2>&1 || true
cat >tools.go <<'GO'
//go:build tools

package kubebins

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
$GO mod tidy >&2
rm -rf "$out.tmp"
mkdir -p "$out.tmp"
pkgs=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl)
total=$($GO list -deps "${pkgs[@]}" | wc -l)
echo "kube-bins: compiling up to $total packages (a line per 100 compiled; those in Go's build cache are not counted)" >&2
# go build -v names each package as it is built; anything else it prints
# (an error) has a space in it and is passed on as it is.
# The version stamp Kubernetes' own build (hack/lib/version.sh) sets: what
# the servers report in /version, and client-go's user agent.
minor=${kube#v1.}
minor=${minor%%.*}
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $p.gitVersion=$kube -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
$GO build -v -trimpath -ldflags="$ldflags" -o "$out.tmp/" "${pkgs[@]}" 2>&1 |
	awk -v total="$total" '
		/^[^ ]+$/ { n++; if (n % 100 == 0) { printf "kube-bins: %d/%d packages\n", n, total; fflush() } next }
		{ print; fflush() }' >&2
# Two renames: tests running meanwhile find binaries at every moment but
# one.
rm -rf "$out.old"
if [ -d "$out" ]; then mv "$out" "$out.old"; fi
mv "$out.tmp" "$out"
rm -rf "$out.old"
echo "kube-bins: done" >&2
echo "$out"
