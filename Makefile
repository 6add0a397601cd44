# weft: build, test, demo and benchmark. Every target that runs something
# first installs what it needs (make deps): a fresh Debian machine needs only
# `make demo` and `make test`.

GO      ?= go
BIN     := $(CURDIR)/bin
CNI_BIN := $(BIN)/cni

# The reference CNI plugins the lab's pods are wired with, at the version
# go.mod already requires.
CNI_PLUGINS_MODULE  := github.com/containernetworking/plugins
CNI_PLUGINS_VERSION := $(shell $(GO) list -m -f '{{.Version}}' $(CNI_PLUGINS_MODULE) 2>/dev/null)
CNI_PLUGINS         := main/bridge ipam/host-local meta/portmap main/loopback
# cnitool (bin/cnitool) runs a conflist by hand, for manual checks of weft-cni.
CNI_MODULE  := github.com/containernetworking/cni
CNI_VERSION := $(shell $(GO) list -m -f '{{.Version}}' $(CNI_MODULE) 2>/dev/null)

# The version every binary reports (weft version, weftd --version): the
# nearest tag, commits since and commit, -dirty for uncommitted changes. A
# tree without git falls back to what Go records (internal/buildinfo).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null)
LDFLAGS := $(if $(VERSION),-X main.version=$(VERSION))

# Static binaries, as the image and the reference plugins' releases are: a
# plugin exec'd for every pod starts a millisecond and more sooner without
# the dynamic loader, and the lab measures what a node runs.
export CGO_ENABLED := 0

# Labs of `make demo` and `make bench` live under their own roots, so that
# the trap that cleans up after them touches no other lab.
DEMO_ROOT  ?= /tmp/weft-demo
BENCH_ROOT ?= /tmp/weft-bench

# The container image deploy/kube/weft.yml runs; the manifest names the same
# reference (a test checks), so change both together. The binaries go into
# it static (they run on Debian's root file system but need none of it);
# the archive is an OCI image layout in a tar (`ctr -n k8s.io images import`
# or `skopeo copy oci-archive:...` take it).
IMAGE     := ghcr.io/weft-net/weft:v0.1.0
IMAGE_OUT ?= $(BIN)/weft-image.oci.tar
IMAGE_BIN ?= $(BIN)/image
# The last commit's time, so that one commit gives one image digest.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null)

.PHONY: all deps build cni-plugins kube-bins test vet fuzz demo bench clean image print-image

all: build

deps:
	scripts/deps.sh

# weft's CNI plugin goes beside the reference plugins, under both of the
# names it is installed as.
build: cni-plugins
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...
	@if [ -x $(BIN)/weft-cni ]; then ln -sf ../weft-cni $(CNI_BIN)/weft; ln -sf ../weft-cni $(CNI_BIN)/flannel; fi

# A stamp per version: `go install` is cached, but linking four binaries on
# every build is not free.
cni-plugins: $(CNI_BIN)/.version-$(CNI_PLUGINS_VERSION)-$(CNI_VERSION)-static

$(CNI_BIN)/.version-$(CNI_PLUGINS_VERSION)-$(CNI_VERSION)-static:
	@test -n "$(CNI_PLUGINS_VERSION)" || { echo "cannot find $(CNI_PLUGINS_MODULE) in go.mod" >&2; exit 1; }
	mkdir -p $(CNI_BIN)
	GOBIN=$(CNI_BIN) $(GO) install $(foreach p,$(CNI_PLUGINS),$(CNI_PLUGINS_MODULE)/plugins/$(p)@$(CNI_PLUGINS_VERSION))
	GOBIN=$(BIN) $(GO) install $(CNI_MODULE)/cnitool@$(CNI_VERSION)
	rm -f $(CNI_BIN)/.version-*
	touch $@

# A real kube-apiserver and kube-controller-manager for the tests of the
# Kubernetes store (internal/kubecp, internal/kubetest) and the lab's
# --store kube: built from the module proxy at the version of client-go in
# go.mod, cached by version under ~/.cache/weft/kube (minutes the first
# time; the script shows its progress), then found again at once.
kube-bins: deps
	scripts/kube-bins.sh

vet:
	$(GO) vet ./...

# Every fuzz test (each Fuzz function the tree has) for a fixed number of
# inputs; under a minute in all. FUZZ_EXECS=200000x fuzzes longer.
fuzz:
	GO=$(GO) scripts/fuzz.sh

# Root-only tests (namespaces) run too: they skip, saying so, without root.
test: deps build vet fuzz kube-bins
	WEFT_BIN_DIR=$(BIN) WEFT_KUBE_BIN_DIR=$$(scripts/kube-bins.sh | tail -n 1) $(GO) test -count=1 -timeout 14m ./...

demo: deps build
	@trap '$(BIN)/weft lab down --all --root $(DEMO_ROOT) >/dev/null' EXIT; \
	$(BIN)/weft lab demo --root $(DEMO_ROOT) --backends vxlan,host-gw --nodes 3

bench: deps build
	@trap '$(BIN)/weft lab down --all --root $(BENCH_ROOT) >/dev/null' EXIT; \
	$(BIN)/weft lab bench --all --root $(BENCH_ROOT)

# Debian packages and layers are cached (see hack/mkimage --help), so only
# the first build downloads and compresses.
image: deps
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w -X main.version=$(VERSION)' -o $(IMAGE_BIN)/ ./cmd/weftd ./cmd/weft ./cmd/weft-cni
	$(GO) run ./hack/mkimage --ref $(IMAGE) --version $(VERSION) --bin-dir $(IMAGE_BIN) --out $(IMAGE_OUT) $(if $(SOURCE_DATE_EPOCH),--created $(SOURCE_DATE_EPOCH))

print-image:
	@echo $(IMAGE)

clean:
	rm -rf $(BIN)
