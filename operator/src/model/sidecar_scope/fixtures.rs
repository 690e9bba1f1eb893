//! YAML and proxies the Sidecar scoping tests (model and translation) share.

use capstan_xds::{ProxyInfo, Role};

/// A ServiceEntry `name.namespace.svc.cluster.local`, HTTP on 80, one endpoint (`version:
/// v1`).
pub(crate) fn service_entry(name: &str, namespace: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{name}.{namespace}.svc.cluster.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.1, labels: {{version: v1}}}}]
"
    )
}

/// A Sidecar with one egress listener of `hosts` (a YAML list), selecting workloads by the
/// labels `selector` (YAML map entries) when given.
pub(crate) fn sidecar(name: &str, namespace: &str, selector: Option<&str>, hosts: &str) -> String {
    let egress = format!("  egress: [{{hosts: {hosts}}}]\n");
    sidecar_with(name, namespace, selector, &egress)
}

/// A Sidecar whose spec is `spec` (YAML lines indented by two) and a selector as above.
pub(crate) fn sidecar_with(
    name: &str,
    namespace: &str,
    selector: Option<&str>,
    spec: &str,
) -> String {
    let selector = selector
        .map(|l| format!("  workloadSelector: {{labels: {{{l}}}}}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: {name}, namespace: {namespace}}}
spec:
{selector}{spec}"
    )
}

/// A sidecar of `namespace` with `labels`.
pub(crate) fn sidecar_proxy(namespace: &str, labels: &[(&str, &str)]) -> ProxyInfo {
    ProxyInfo {
        role: Role::Sidecar,
        namespace: Some(namespace.into()),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..ProxyInfo::default()
    }
}
