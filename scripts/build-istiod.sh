#!/usr/bin/env bash
# Builds istiod's `pilot-discovery`, the peer of the Kubernetes-mode benchmark
# (capstan-kube-bench), from the Go module istio.io/istio through a wrapper module,
# idempotently, into $CAPSTAN_TOOLS_DIR/istiod/pilot-discovery. Prints that path on stdout;
# progress goes to stderr. Go's module and build caches go to $CAPSTAN_TOOLS_DIR/go unless
# GOMODCACHE/GOCACHE are set (shared with scripts/build-kube.sh). ~5 min cold on 2 cores; under
# 2 min when the Go build cache already holds the Kubernetes packages from build-kube.sh.
# The stripped binary is ~125 MB.
set -euo pipefail

ISTIO_VERSION="${ISTIO_VERSION:-v0.0.0-20260827124520-eed52ebb66ad}"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${CAPSTAN_TOOLS_DIR:-$REPO_DIR/.tools}"
OUT="$TOOLS_DIR/istiod"
BIN="$OUT/pilot-discovery"
say() { echo "build-istiod: $*" >&2; }

# shellcheck source=go-env.sh
source "$REPO_DIR/scripts/go-env.sh"
mkdir -p "$OUT"

if [[ -x "$BIN" ]] && [[ "$(cat "$OUT/version" 2>/dev/null)" == "$ISTIO_VERSION" ]]; then
    say "pilot-discovery istio.io/istio@$ISTIO_VERSION present"
else
    say "building pilot-discovery from istio.io/istio@$ISTIO_VERSION with $("$GO" version) (~5 min cold) ..."
    work="$(mktemp -d)"
    (
        cd "$work"
        "$GO" mod init capstan.local/istiod >/dev/null 2>&1
        igomod="$("$GO" mod download -json "istio.io/istio@$ISTIO_VERSION" \
            | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
        # Replace directives and godebug settings of istio's own go.mod apply only there.
        grep -E '^godebug ' "$igomod" >> go.mod || true
        "$GO" get "istio.io/istio/pilot/cmd/pilot-discovery@$ISTIO_VERSION" >&2
        "$GO" build -trimpath -ldflags "-s -w" -o "$BIN.tmp" istio.io/istio/pilot/cmd/pilot-discovery
    )
    rm -rf "$work"
    mv "$BIN.tmp" "$BIN"
    echo "$ISTIO_VERSION" > "$OUT/version"
fi
echo "$BIN"
