#!/usr/bin/env bash
# Builds the real kube-apiserver and etcd that the Kubernetes e2e tests run on loopback,
# from Go modules (no registry ships these binaries), idempotently:
#   - kube-apiserver v$K8S_VERSION from k8s.io/kubernetes, through a wrapper module whose
#     `replace` directives point each staging module at the published k8s.io/X v0.<minor>.<patch>
#   - etcd v$ETCD_VERSION from a wrapper module over go.etcd.io/etcd/server/v3
# into $CAPSTAN_TOOLS_DIR/kube/. Prints that directory on stdout; progress goes to stderr.
# Go's module and build caches go to $CAPSTAN_TOOLS_DIR/go unless GOMODCACHE/GOCACHE are set,
# so a cached tools dir makes a rebuild fast. Cold: ~9 min (apiserver) + ~1 min (etcd) on 2 cores.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${CAPSTAN_TOOLS_DIR:-$REPO_DIR/.tools}"
OUT="$TOOLS_DIR/kube"
say() { echo "build-kube: $*" >&2; }

# shellcheck source=go-env.sh
source "$REPO_DIR/scripts/go-env.sh"
mkdir -p "$OUT"

if [[ -x "$OUT/kube-apiserver" ]] && "$OUT/kube-apiserver" --version 2>/dev/null | grep -q "v$K8S_VERSION\$"; then
    say "kube-apiserver v$K8S_VERSION present"
else
    say "building kube-apiserver v$K8S_VERSION with $("$GO" version) (~9 min cold) ..."
    work="$(mktemp -d)"
    (
        cd "$work"
        "$GO" mod init capstan.local/kube-apiserver >/dev/null 2>&1
        kgomod="$("$GO" mod download -json "k8s.io/kubernetes@v$K8S_VERSION" \
            | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
        minor_patch="${K8S_VERSION#*.}"
        mods="$(grep -oE 'k8s\.io/[A-Za-z0-9._-]+ => \./staging/src/k8s\.io/[A-Za-z0-9._-]+' "$kgomod" \
            | awk '{print $1}' | sort -u)"
        [[ -n "$mods" ]] || { say "error: no staging replaces in $kgomod"; exit 1; }
        for m in $mods; do "$GO" mod edit -replace "$m=$m@v0.$minor_patch"; done
        grep -E '^godebug ' "$kgomod" >> go.mod || true
        "$GO" get "k8s.io/kubernetes/cmd/kube-apiserver@v$K8S_VERSION" >&2
        ld="-s -w"
        for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
            ld="$ld -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=${minor_patch%%.*} -X $p.gitTreeState=clean"
        done
        "$GO" build -trimpath -ldflags "$ld" -o "$OUT/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
    )
    rm -rf "$work"
    mv "$OUT/kube-apiserver.tmp" "$OUT/kube-apiserver"
fi

if [[ -x "$OUT/etcd" ]] && "$OUT/etcd" --version 2>/dev/null | grep -q "etcd Version: $ETCD_VERSION"; then
    say "etcd $ETCD_VERSION present"
else
    say "building etcd $ETCD_VERSION (~1 min cold) ..."
    work="$(mktemp -d)"
    (
        cd "$work"
        "$GO" mod init capstan.local/etcd >/dev/null 2>&1
        "$GO" get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >&2
        "$GO" build -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3
    )
    rm -rf "$work"
    mv "$OUT/etcd.tmp" "$OUT/etcd"
fi
say "$("$OUT/kube-apiserver" --version), etcd $("$OUT/etcd" --version | head -1 | awk '{print $3}')"
echo "$OUT"
