//! A `Sidecar`'s `inboundConnectionPool`: the connection limits of the inbound clusters of
//! the sidecars it covers (the clusters to their workload's ports), as in Istio, where it
//! overrides what a DestinationRule would set there. An ingress listener's own
//! `connectionPool` overrides it for that port ([`super::IngressPort::pool`]).

use capstan_crds::ObjectKey;

use super::{PerScope, Scopes};
use crate::model::traffic_policy::ConnectionPool;

/// Every sidecar's inbound limits (`None`: no limits but Envoy's, as istiod's defaults).
pub type InboundPools = PerScope<Option<ConnectionPool>>;

impl Scopes {
    /// The inbound limits of every sidecar: everyone's, and those of the sets of sidecars
    /// (a scope's) that read others.
    pub fn inbound_pools(&self) -> InboundPools {
        self.per_scope(|scope| scope.and_then(|s| s.inbound_pool.clone()))
    }

    /// The `Sidecar`s that set `inboundConnectionPool`.
    pub fn setting_inbound_pool(&self) -> impl Iterator<Item = &ObjectKey> {
        self.by_key
            .values()
            .filter(|s| s.inbound_pool.is_some())
            .map(|s| &s.origin)
    }
}

#[cfg(test)]
mod tests {
    use capstan_xds::Selector;

    use super::super::fixtures::sidecar_with;
    use crate::index::{Index, istio_event as istio};
    use crate::model::Mesh;

    fn pool(max_connections: u32) -> String {
        format!("  inboundConnectionPool: {{tcp: {{maxConnections: {max_connections}}}}}\n")
    }

    #[test]
    fn each_sidecar_reads_the_inbound_pool_of_its_scope() {
        let mut index = Index::new();
        for yaml in [
            sidecar_with("default", "istio-system", None, &pool(10)),
            sidecar_with("default", "shop", None, &pool(20)),
            // A workload's own Sidecar without a pool: no limits, not its namespace's.
            sidecar_with(
                "admin",
                "shop",
                Some("app: admin"),
                "  egress: [{hosts: [\"*/*\"]}]\n",
            ),
            // The same limits as the root's default: nothing apart.
            sidecar_with("default", "web", None, &pool(10)),
        ] {
            index.handle(istio(&yaml));
        }
        let (mesh, problems) = Mesh::build(&index, "cluster.local");
        assert!(problems.is_empty(), "{problems:?}");
        let pools = mesh.sidecar_scopes.inbound_pools();
        let max = |pool: &Option<crate::model::traffic_policy::ConnectionPool>| {
            pool.as_ref()
                .and_then(|p| p.tcp.as_ref())
                .map(|t| t.max_connections)
        };
        assert_eq!(max(&pools.everyone), Some(10));
        assert_eq!(pools.scoped.len(), 2, "shop and admin: {:?}", pools.scoped);
        let of = |ns: &str, labels: &[(&str, &str)]| {
            let mut selector = Selector::namespace(ns);
            selector.labels = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            max(pools.for_proxies(&selector))
        };
        assert_eq!(of("shop", &[]), Some(20));
        assert_eq!(of("shop", &[("app", "admin")]), None);
        assert_eq!(of("web", &[]), Some(10));
        assert_eq!(of("bookinfo", &[]), Some(10));
        assert_eq!(mesh.sidecar_scopes.setting_inbound_pool().count(), 3);
    }
}
