#!/usr/bin/env bash
# capstan on a real (kind) cluster, installed the way Istio users install istiod:
#   1. a kind cluster (reused if it exists), both images loaded from scripts/images.sh's archives;
#   2. the CRDs (server-side apply, as on upgrade), then `helm upgrade --install` of
#      charts/capstan with values-dev.yaml but Istio's failurePolicy Fail, and the ingress
#      gateway chart;
#   3. namespace bookinfo labelled istio-injection=enabled with bookinfo's details and
#      productpage and a curl client; namespace legacy without injection;
#   4. checks: every bookinfo pod got an istio-proxy; client -> details and client ->
#      productpage answer 200 through the sidecars; with PeerAuthentication STRICT in bookinfo a
#      plaintext request from legacy is refused while the meshed client still gets 200.
#
# Needs: kind, docker or podman, kubectl, helm (HELM_BIN or PATH), network access for kind's
# node image and bookinfo's images. NOT run in CI (no container engine there): see
# docs/install.md. KEEP_CLUSTER=1 leaves the cluster up; KIND_CLUSTER names it.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${CAPSTAN_TOOLS_DIR:-$REPO_DIR/.tools}"
IMAGES="${IMAGES:-$TOOLS_DIR/images}"
CLUSTER="${KIND_CLUSTER:-capstan-e2e}"
HELM="${HELM_BIN:-$(command -v helm || true)}"
BOOKINFO_TAG="${BOOKINFO_TAG:-1.20.2}"
TIMEOUT=300s

say() { echo "kind-e2e: $*" >&2; }
die() { say "FAIL: $*"; exit 1; }

for tool in kind kubectl; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
[[ -n "$HELM" && -x "$HELM" ]] || die "helm not found: run scripts/helm.sh or set HELM_BIN"
if ! command -v docker >/dev/null && ! command -v podman >/dev/null; then
    die "kind needs docker or podman; neither is installed"
fi
command -v docker >/dev/null || export KIND_EXPERIMENTAL_PROVIDER=podman
for archive in capstan capstan-proxy; do
    [[ -f "$IMAGES/$archive.docker.tar" ]] || die "$IMAGES/$archive.docker.tar missing: run make images"
done

if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    say "creating kind cluster $CLUSTER ..."
    kind create cluster --name "$CLUSTER" --wait "$TIMEOUT"
fi
if [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then
    trap 'say "deleting cluster $CLUSTER (KEEP_CLUSTER=1 keeps it)"; kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true' EXIT
fi
export KUBECONFIG="${TMPDIR:-/tmp}/capstan-kind-$CLUSTER.kubeconfig"
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG"

say "loading images ..."
for archive in capstan capstan-proxy; do
    kind load image-archive "$IMAGES/$archive.docker.tar" --name "$CLUSTER"
done

say "CRDs and the chart ..."
kubectl apply --server-side -f "$REPO_DIR/charts/capstan/crds/"
"$HELM" upgrade --install capstan "$REPO_DIR/charts/capstan" \
    --namespace istio-system --create-namespace \
    -f "$REPO_DIR/charts/capstan/values-dev.yaml" \
    --set webhooks.injection.failurePolicy=Fail \
    --set webhooks.validation.failurePolicy=Fail \
    --wait --timeout "$TIMEOUT"
kubectl -n istio-system rollout status deploy/capstan --timeout "$TIMEOUT"
"$HELM" upgrade --install istio-ingressgateway "$REPO_DIR/charts/capstan-gateway" \
    --namespace istio-ingress --create-namespace \
    --set service.type=NodePort --set replicaCount=1 --set image.pullPolicy=Never \
    --wait --timeout "$TIMEOUT"

# capstan patched its CA root into both webhook configurations.
for kind in validatingwebhookconfiguration/capstan-validation mutatingwebhookconfiguration/capstan-sidecar-injector; do
    bundle="$(kubectl get "$kind" -o jsonpath='{.webhooks[0].clientConfig.caBundle}')"
    [[ -n "$bundle" ]] || die "$kind has no caBundle: capstan did not patch it"
done

say "bookinfo (injected) and legacy (not injected) ..."
kubectl create namespace bookinfo --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace bookinfo istio-injection=enabled --overwrite
kubectl create namespace legacy --dry-run=client -o yaml | kubectl apply -f -
workloads() {
    local ns="$1" name image port
    for spec in "details:docker.io/istio/examples-bookinfo-details-v1:$BOOKINFO_TAG:9080" \
                "productpage:docker.io/istio/examples-bookinfo-productpage-v1:$BOOKINFO_TAG:9080"; do
        name="${spec%%:*}"; image="${spec#*:}"; port="${image##*:}"; image="${image%:*}"
        [[ "$ns" == bookinfo ]] || continue
        kubectl -n "$ns" apply -f - <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: bookinfo-$name}
---
apiVersion: v1
kind: Service
metadata: {name: $name, labels: {app: $name}}
spec:
  selector: {app: $name}
  ports: [{name: http, port: $port}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: $name-v1}
spec:
  selector: {matchLabels: {app: $name, version: v1}}
  template:
    metadata: {labels: {app: $name, version: v1}}
    spec:
      serviceAccountName: bookinfo-$name
      containers:
      - {name: $name, image: $image, ports: [{containerPort: $port}]}
EOF
    done
    kubectl -n "$ns" apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: client}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers:
      - {name: client, image: docker.io/curlimages/curl:8.11.1, command: [sleep, infinity]}
EOF
}
workloads bookinfo
workloads legacy
for ns in bookinfo legacy; do
    kubectl -n "$ns" wait deploy --all --for=condition=Available --timeout "$TIMEOUT"
done

for pod in $(kubectl -n bookinfo get pods -o name); do
    containers="$(kubectl -n bookinfo get "$pod" -o jsonpath='{.spec.containers[*].name}')"
    [[ " $containers " == *" istio-proxy "* ]] || die "$pod was not injected (containers: $containers)"
done
say "every bookinfo pod has an istio-proxy"

# HTTP status of a GET from the client of namespace $1; 000 when the connection fails.
status_from() {
    kubectl -n "$1" exec deploy/client -c client -- \
        curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$2" || true
}
expect() {
    local ns="$1" url="$2" want="$3" got
    for _ in $(seq 1 30); do
        got="$(status_from "$ns" "$url")"
        [[ "$got" == "$want" ]] && { say "ok: $ns -> $url: $got"; return 0; }
        sleep 2
    done
    die "$ns -> $url: got $got, want $want"
}

expect bookinfo http://details:9080/details/0 200
expect bookinfo http://productpage:9080/productpage 200
expect legacy http://details.bookinfo:9080/details/0 200

say "PeerAuthentication STRICT in bookinfo ..."
kubectl -n bookinfo apply -f - <<'EOF'
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec:
  mtls: {mode: STRICT}
EOF
# Plaintext from outside the mesh is refused; the meshed client (mutual TLS) still gets through.
expect legacy http://details.bookinfo:9080/details/0 000
expect bookinfo http://details:9080/details/0 200

say "capstan's view (syncz through the API server's service proxy):"
kubectl get --raw "/api/v1/namespaces/istio-system/services/http:capstan:15014/proxy/debug/syncz" | head -n 20 || true
say "PASS"
