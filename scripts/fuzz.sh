#!/usr/bin/env bash
# Runs every fuzz test of the module (make test runs this): each Fuzz
# function found in a _test.go file, so a new one is never left out, for a
# fixed number of inputs (FUZZ_EXECS, default 20000x: a few seconds each
# here). A count, not a duration: Go 1.26's fuzzer can fail a -fuzztime=3s
# run with "context deadline exceeded" when the machine is loaded
# (golang/go#75804). An input that fails is saved under the package's
# testdata/fuzz/<FuzzName>/, where go test then replays it as a seed.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
EXECS=${FUZZ_EXECS:-20000x}

found=0
while IFS= read -r file; do
	dir=$(dirname "$file")
	for name in $(sed -nE 's/^func (Fuzz[A-Za-z0-9_]*)\(.*/\1/p' "$file"); do
		found=$((found + 1))
		echo "fuzz $dir $name ($EXECS)"
		"$GO" test -run='^$' -fuzz="^${name}\$" -fuzztime="$EXECS" "./$dir"
	done
done < <(find . -path ./bin -prune -o -name '*_test.go' -print | sort)
if [ "$found" -eq 0 ]; then
	echo "fuzz: no fuzz tests found" >&2
	exit 1
fi
echo "fuzz: $found fuzz tests passed"
