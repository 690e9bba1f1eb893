//! Which gateway proxies forward connections to a service unread (AUTO_PASSTHROUGH servers,
//! the east-west gateway): they get the service's SNI-DNAT clusters
//! (`translate::cluster::sni_dnat`) and a filter chain per cluster
//! (`translate::gateway::auto_passthrough`).

use std::collections::{BTreeMap, BTreeSet};

use super::{Server, ServerKind};
use crate::model::{Mesh, Service, hostname};

/// Proxy labels, as a Gateway selector names them.
pub type Labels = BTreeMap<String, String>;

/// Whether east-west traffic can name `service`: it has a host of its own (an SNI names one
/// host, never a wildcard) and is inside the mesh (as with istiod, `MESH_EXTERNAL` services
/// are not forwarded to).
pub fn reachable(service: &Service) -> bool {
    !service.host.contains('*') && !service.mesh_external
}

/// The host patterns of an AUTO_PASSTHROUGH server (the namespace part of a host is
/// ignored, as istiod ignores it); none for another kind of server.
pub fn patterns(server: &Server) -> impl Iterator<Item = &str> + '_ {
    (server.kind == ServerKind::AutoPassthrough)
        .then_some(&server.hosts)
        .into_iter()
        .flatten()
        .map(|h| h.host.as_str())
}

/// Whether `server` is an AUTO_PASSTHROUGH server one of whose hosts covers `host` (either
/// case).
pub fn covers(server: &Server, host: &str) -> bool {
    patterns(server).any(|p| hostname::matches(p, host))
}

/// The selectors of the Gateways with an AUTO_PASSTHROUGH server covering `service`, none
/// wider than another: a proxy the wider one selects (more labels), the narrower selects too.
pub fn selectors<'a>(mesh: &'a Mesh, service: &Service) -> Vec<&'a Labels> {
    if !reachable(service) {
        return Vec::new();
    }
    let mut found: Vec<&Labels> = Vec::new();
    for gateway in mesh.gateways.values() {
        let forwards = (gateway.servers.iter()).any(|s| covers(s, &service.host));
        if forwards && !found.contains(&&gateway.selector) {
            found.push(&gateway.selector);
        }
    }
    let narrower = |wide: &Labels, narrow: &Labels| {
        wide != narrow && narrow.iter().all(|(k, v)| wide.get(k) == Some(v))
    };
    let all = found.clone();
    found.retain(|wide| !all.iter().any(|narrow| narrower(wide, narrow)));
    found
}

/// Every AUTO_PASSTHROUGH server of the mesh as (selector, host pattern): where this
/// changes, the services under the patterns that came or went gain or lose SNI-DNAT clusters.
pub fn servers(mesh: &Mesh) -> BTreeSet<(Labels, String)> {
    let mut out = BTreeSet::new();
    for gateway in mesh.gateways.values() {
        for server in &gateway.servers {
            let lower = patterns(server).map(str::to_ascii_lowercase);
            out.extend(lower.map(|p| (gateway.selector.clone(), p)));
        }
    }
    out
}

/// The hosts of `mesh` some pattern of `servers` covers.
pub fn hosts_under<'a>(
    mesh: &Mesh,
    servers: impl IntoIterator<Item = &'a (Labels, String)>,
) -> BTreeSet<String> {
    let patterns: BTreeSet<&str> = servers.into_iter().map(|(_, p)| p.as_str()).collect();
    if patterns.is_empty() {
        return BTreeSet::new();
    }
    (mesh.services.keys())
        .filter(|host| patterns.iter().any(|p| hostname::matches(p, host)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::test_support::{REVIEWS, mesh};

    /// An external service besides `REVIEWS` (inside the mesh), both under `*.local`.
    const EXTERNAL: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: bookinfo}
spec:
  hosts: [api.example.local]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
"#;

    fn gateway(name: &str, selector: &str, mode: &str, host: &str) -> String {
        format!(
            r#"
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: istio-system}}
spec:
  selector: {selector}
  servers:
  - port: {{number: 15443, name: tls, protocol: TLS}}
    hosts: ["{host}"]
    tls: {{mode: {mode}}}
"#
        )
    }

    fn selected(yaml: &str, host: &str) -> Vec<Labels> {
        let mesh = mesh(yaml);
        let service = &mesh.services[host];
        selectors(&mesh, service).into_iter().cloned().collect()
    }

    #[test]
    fn the_narrowest_selectors_of_servers_covering_an_internal_service() {
        let reviews = "reviews.bookinfo.svc.cluster.local";
        let yaml = [
            REVIEWS.to_string(),
            "---".to_string(),
            EXTERNAL.to_string(),
            gateway("east", "{istio: eastwest}", "AUTO_PASSTHROUGH", "*.local"),
            gateway(
                "east-a",
                "{istio: eastwest, zone: a}",
                "AUTO_PASSTHROUGH",
                "*.local",
            ),
            gateway(
                "other",
                "{istio: other}",
                "AUTO_PASSTHROUGH",
                "*.example.com",
            ),
            gateway("tls", "{istio: tls}", "PASSTHROUGH", "*.local"),
        ]
        .concat();
        let eastwest = Labels::from([("istio".to_string(), "eastwest".to_string())]);
        assert_eq!(selected(&yaml, reviews), vec![eastwest]);
        assert!(
            selected(&yaml, "api.example.local").is_empty(),
            "a MESH_EXTERNAL service is not forwarded to"
        );
        let mesh = mesh(&yaml);
        let servers = servers(&mesh);
        assert_eq!(servers.len(), 3, "{servers:?}");
        assert_eq!(
            hosts_under(&mesh, &servers),
            BTreeSet::from(["api.example.local".to_string(), reviews.to_string()]),
        );
    }
}
