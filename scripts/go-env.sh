# Sourced by the scripts that build Go tools (build-kube.sh, build-istiod.sh): finds Go and
# sets one environment for them, with Go's module and build caches under the tools dir
# (unless GOMODCACHE/GOCACHE are set) so a cached tools dir makes rebuilds fast.
# Expects TOOLS_DIR and a `say` function; sets GO.
GO="${GO:-go}"
if ! command -v "$GO" >/dev/null; then
    if [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go; else
        say "error: go not found (install Go >= 1.26, or set GO=/path/to/go)"; exit 1
    fi
fi
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" CGO_ENABLED=0 GOFLAGS=-mod=mod
export GOMODCACHE="${GOMODCACHE:-$TOOLS_DIR/go/mod}" GOCACHE="${GOCACHE:-$TOOLS_DIR/go/build}"
