#!/usr/bin/env bash
# Builds the go-control-plane peer bench server (load/peer) into $CAPSTAN_TOOLS_DIR/gcp-peer,
# idempotently: nothing is rebuilt when the binary is newer than every file in load/peer.
# Prints the binary's path on stdout (progress goes to stderr), so
#   CAPSTAN_GCP_PEER=$(scripts/build-peer.sh)
# works. Needs Go (>= the version in load/peer/go.mod) and the Go module proxy.
#
# CAPSTAN_TOOLS_DIR defaults to <repo>/.tools (ignored by git).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${CAPSTAN_TOOLS_DIR:-$REPO_DIR/.tools}"
PEER_DIR="$REPO_DIR/load/peer"
OUT="$TOOLS_DIR/gcp-peer"

say() { echo "build-peer: $*" >&2; }

if [[ ! -f "$PEER_DIR/go.mod" ]]; then
    say "error: $PEER_DIR/go.mod not found"
    exit 1
fi
GO="${GO:-go}"
if ! command -v "$GO" >/dev/null; then
    if [[ -x /usr/local/go/bin/go ]]; then
        GO=/usr/local/go/bin/go
    else
        say "error: go not found (install Go, or set GO=/path/to/go)"
        exit 1
    fi
fi

mkdir -p "$TOOLS_DIR"
if [[ -x "$OUT" ]] && [[ -z "$(find "$PEER_DIR" -type f -newer "$OUT" -print -quit)" ]]; then
    say "up to date: $OUT"
else
    say "building $OUT with $("$GO" version) ..."
    (cd "$PEER_DIR" && "$GO" build -trimpath -o "$OUT.tmp" .)
    mv "$OUT.tmp" "$OUT"
    say "built $OUT"
fi
printf '%s\n' "$OUT"
