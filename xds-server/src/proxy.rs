//! Who a proxy is (from its xDS node), and selectors that say which proxies a resource is for.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, value::Kind};

/// What a proxy does, from the first part of its Istio-style node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Role {
    /// A workload's sidecar (`sidecar~…`).
    #[default]
    Sidecar,
    /// A gateway (`router~…`).
    Router,
}

/// The facts about a proxy that decide which resources it sees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyInfo {
    pub id: String,
    pub role: Role,
    pub namespace: Option<Arc<str>>,
    /// The `SERVICE_ACCOUNT` metadata: whose identity the proxy claims (checked against its
    /// client certificate on a TLS connection).
    pub service_account: Option<Arc<str>>,
    pub labels: BTreeMap<String, String>,
    /// Where the proxy runs: its node's locality, else its topology labels.
    pub locality: Locality,
    /// The workload's address: the second part of an Istio-style node id.
    pub address: Option<Arc<str>>,
}

/// `region/zone/subzone`, each part empty when unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// Reads `region/zone/subzone` (missing parts are empty).
    pub fn parse(text: &str) -> Self {
        let mut parts = text.splitn(3, '/').map(str::to_string);
        Self {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }

    pub fn parts(&self) -> [&str; 3] {
        [&self.region, &self.zone, &self.subzone]
    }

    /// `labels` with this locality's topology labels added where they are missing, as Istio
    /// adds them to proxies' and endpoints' labels (so label rules can name them).
    pub fn with_topology_labels(
        &self,
        mut labels: BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        for (key, value) in [
            (REGION_LABEL, &self.region),
            (ZONE_LABEL, &self.zone),
            (SUBZONE_LABEL, &self.subzone),
        ] {
            if !value.is_empty() && !labels.contains_key(key) {
                labels.insert(key.to_string(), value.clone());
            }
        }
        labels
    }
}

/// Fills in what a proxy's node leaves out from what the control plane knows of it, once,
/// when the proxy connects: istiod, for one, takes a pod's locality from its Kubernetes Node
/// when the proxy sends none.
pub trait ProxyResolver: Send + Sync {
    fn resolve(&self, proxy: &mut ProxyInfo);
}

/// The labels Kubernetes and Istio put a workload's locality in.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";

/// The namespace a node says it is in: its `NAMESPACE` metadata, else the namespace in its
/// Istio-style id (`TYPE~IP~POD.NAMESPACE~…`).
pub fn node_namespace(node: &Node) -> Option<&str> {
    let from_id = || {
        node.id
            .split('~')
            .nth(2)
            .and_then(|pod| pod.split_once('.'))
            .map(|(_, ns)| ns)
            .filter(|ns| !ns.is_empty())
    };
    node.metadata
        .as_ref()
        .and_then(|m| string_field(m, "NAMESPACE"))
        .or_else(from_id)
}

/// The service account a node says it runs as (its `SERVICE_ACCOUNT` metadata).
pub fn node_service_account(node: &Node) -> Option<&str> {
    node.metadata
        .as_ref()
        .and_then(|m| string_field(m, "SERVICE_ACCOUNT"))
}

impl ProxyInfo {
    /// Reads an Istio-style node: id `TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN`, metadata
    /// `NAMESPACE` and `SERVICE_ACCOUNT` (strings) and `LABELS` (string map). Missing parts
    /// stay unset.
    pub fn from_node(node: &Node) -> Self {
        let role = match node.id.split('~').next() {
            Some("router") => Role::Router,
            _ => Role::Sidecar,
        };
        let metadata = node.metadata.as_ref();
        let namespace = node_namespace(node).map(Arc::from);
        let service_account = node_service_account(node).map(Arc::from);
        let labels = metadata
            .and_then(|m| m.fields.get("LABELS"))
            .and_then(|v| match &v.kind {
                Some(Kind::StructValue(s)) => Some(
                    s.fields
                        .iter()
                        .filter_map(|(k, v)| match &v.kind {
                            Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                            _ => None,
                        })
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default();
        let locality = node_locality(node, &labels);
        let labels = locality.with_topology_labels(labels);
        let address = node
            .id
            .split('~')
            .nth(1)
            .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
            .map(Arc::from);
        Self {
            address,
            id: node.id.clone(),
            role,
            namespace,
            service_account,
            labels,
            locality,
        }
    }
}

impl ProxyInfo {
    /// The pod name in an Istio-style node id (`TYPE~IP~POD.NAMESPACE~DOMAIN`), if the id has
    /// that shape.
    pub fn pod_name(&self) -> Option<&str> {
        let mut parts = self.id.split('~');
        let (_, _, pod, _) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let name = pod.split_once('.').map_or(pod, |(name, _)| name);
        (!name.is_empty()).then_some(name)
    }
}

/// The node's own locality when it has a region, else the one its topology labels give.
fn node_locality(node: &Node, labels: &BTreeMap<String, String>) -> Locality {
    if let Some(l) = node.locality.as_ref().filter(|l| !l.region.is_empty()) {
        return Locality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            subzone: l.sub_zone.clone(),
        };
    }
    let label = |key| labels.get(key).cloned().unwrap_or_default();
    Locality {
        region: label(REGION_LABEL),
        zone: label(ZONE_LABEL),
        subzone: label(SUBZONE_LABEL),
    }
}

fn string_field<'a>(s: &'a Struct, name: &str) -> Option<&'a str> {
    match s.fields.get(name).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(v)) if !v.is_empty() => Some(v),
        _ => None,
    }
}

/// Which proxies a resource is for. Every condition set must hold; the default selects all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    pub role: Option<Role>,
    pub namespace: Option<Arc<str>>,
    pub labels: BTreeMap<String, String>,
    /// A locality prefix (`[region]`, `[region, zone]` or all three parts) the proxy's
    /// locality must start with; empty: any.
    pub locality: Vec<String>,
    /// The workload address the proxy must have.
    pub address: Option<Arc<str>>,
}

impl Selector {
    /// Selects every proxy.
    pub fn all() -> Self {
        Self::default()
    }

    pub fn role(role: Role) -> Self {
        Self {
            role: Some(role),
            ..Self::default()
        }
    }

    pub fn namespace(namespace: &str) -> Self {
        Self {
            namespace: Some(namespace.into()),
            ..Self::default()
        }
    }

    /// The proxies whose locality starts with `prefix` (at most three parts).
    pub fn locality(prefix: &[&str]) -> Self {
        Self {
            locality: prefix.iter().take(3).map(|p| p.to_string()).collect(),
            ..Self::default()
        }
    }

    /// The sidecars of the workload at `address`.
    pub fn workload(address: &str) -> Self {
        Self {
            role: Some(Role::Sidecar),
            address: Some(address.into()),
            ..Self::default()
        }
    }

    pub fn matches(&self, proxy: &ProxyInfo) -> bool {
        self.role.is_none_or(|r| r == proxy.role)
            && self
                .address
                .as_ref()
                .is_none_or(|a| proxy.address.as_ref() == Some(a))
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| proxy.namespace.as_ref() == Some(ns))
            && self
                .labels
                .iter()
                .all(|(k, v)| proxy.labels.get(k) == Some(v))
            && self
                .locality
                .iter()
                .zip(proxy.locality.parts())
                .all(|(want, has)| want == has)
    }

    /// How narrow the selector is; where several variants of a resource select a proxy, the
    /// most specific one is the proxy's.
    pub fn specificity(&self) -> usize {
        usize::from(self.role.is_some())
            + 2 * usize::from(self.namespace.is_some())
            + 4 * self.labels.len()
            + 4 * self.locality.len()
            + 64 * usize::from(self.address.is_some())
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Selector::all() {
            return f.write_str("all");
        }
        let mut parts = Vec::new();
        if let Some(role) = self.role {
            parts.push(format!("role={role:?}"));
        }
        if let Some(ns) = &self.namespace {
            parts.push(format!("namespace={ns}"));
        }
        for (k, v) in &self.labels {
            parts.push(format!("{k}={v}"));
        }
        if !self.locality.is_empty() {
            parts.push(format!("locality={}", self.locality.join("/")));
        }
        if let Some(address) = &self.address {
            parts.push(format!("address={address}"));
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Value;

    fn string(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.into())),
        }
    }

    fn node(id: &str, namespace: Option<&str>, labels: &[(&str, &str)]) -> Node {
        let mut fields = std::collections::HashMap::new();
        if let Some(ns) = namespace {
            fields.insert("NAMESPACE".to_string(), string(ns));
        }
        if !labels.is_empty() {
            let labels = Struct {
                fields: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), string(v)))
                    .collect(),
            };
            fields.insert(
                "LABELS".to_string(),
                Value {
                    kind: Some(Kind::StructValue(labels)),
                },
            );
        }
        Node {
            id: id.into(),
            metadata: Some(Struct { fields }),
            ..Default::default()
        }
    }

    #[test]
    fn reads_istio_node_ids_and_metadata() {
        let p = ProxyInfo::from_node(&node(
            "sidecar~10.0.0.1~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local",
            None,
            &[("app", "reviews")],
        ));
        assert_eq!(p.role, Role::Sidecar);
        assert_eq!(p.namespace.as_deref(), Some("bookinfo"));
        assert_eq!(p.labels.get("app").map(String::as_str), Some("reviews"));

        let gw = ProxyInfo::from_node(&node(
            "router~10.0.0.2~gw.istio-system~x",
            Some("ingress"),
            &[],
        ));
        assert_eq!(gw.role, Role::Router);
        assert_eq!(
            gw.namespace.as_deref(),
            Some("ingress"),
            "metadata wins over the id"
        );

        let bare = ProxyInfo::from_node(&Node {
            id: "envoy-1".into(),
            ..Default::default()
        });
        assert_eq!(bare.namespace, None);
        assert_eq!(bare.service_account, None);
        assert_eq!(bare.pod_name(), None);
        assert_eq!(p.pod_name(), Some("reviews-v1-abc"));
        assert_eq!(p.address.as_deref(), Some("10.0.0.1"));
        assert!(Selector::workload("10.0.0.1").matches(&p));
        assert!(!Selector::workload("10.0.0.2").matches(&p));
        assert!(!Selector::workload("10.0.0.2").matches(&bare));
        assert_eq!(bare.address, None, "no address in a bare id");
        assert!(
            Selector::workload("10.0.0.1").specificity()
                > Selector::namespace("bookinfo").specificity()
                    + Selector::locality(&["a", "b", "c"]).specificity()
        );
        assert_eq!(gw.pod_name(), Some("gw"));
    }

    #[test]
    fn reads_the_service_account_from_metadata_only() {
        let mut n = node(
            "sidecar~10.0.0.1~r-1.bookinfo~bookinfo.svc.cluster.local",
            None,
            &[],
        );
        assert_eq!(ProxyInfo::from_node(&n).service_account, None);
        n.metadata
            .get_or_insert_default()
            .fields
            .insert("SERVICE_ACCOUNT".to_string(), string("reviews"));
        let p = ProxyInfo::from_node(&n);
        assert_eq!(p.service_account.as_deref(), Some("reviews"));
        assert_eq!(node_service_account(&n), Some("reviews"));
        assert_eq!(node_namespace(&n), Some("bookinfo"));
    }

    #[test]
    fn selectors() {
        let p = ProxyInfo::from_node(&node(
            "sidecar~ip~a.ns1~d",
            None,
            &[("app", "a"), ("v", "1")],
        ));
        assert!(Selector::all().matches(&p));
        assert!(Selector::namespace("ns1").matches(&p));
        assert!(!Selector::namespace("ns2").matches(&p));
        assert!(Selector::role(Role::Sidecar).matches(&p));
        assert!(!Selector::role(Role::Router).matches(&p));
        let labels = Selector {
            labels: [("app".to_string(), "a".to_string())].into(),
            ..Selector::default()
        };
        assert!(labels.matches(&p));
        assert!(labels.specificity() > Selector::namespace("ns1").specificity());
        assert!(Selector::namespace("ns1").specificity() > Selector::all().specificity());
    }

    #[test]
    fn locality_from_the_node_else_its_topology_labels() {
        let mut n = node(
            "sidecar~ip~a.ns1~d",
            None,
            &[(REGION_LABEL, "eu-west-1"), (ZONE_LABEL, "eu-west-1b")],
        );
        let p = ProxyInfo::from_node(&n);
        assert_eq!(p.locality, Locality::parse("eu-west-1/eu-west-1b"));
        n.locality = Some(envoy_types::pb::envoy::config::core::v3::Locality {
            region: "us-east-1".into(),
            zone: "us-east-1a".into(),
            sub_zone: "rack4".into(),
        });
        let p = ProxyInfo::from_node(&n);
        assert_eq!(p.locality, Locality::parse("us-east-1/us-east-1a/rack4"));
        // Its labels say where it is too, unless they already did.
        assert_eq!(
            p.labels.get(SUBZONE_LABEL).map(String::as_str),
            Some("rack4")
        );
        assert_eq!(
            p.labels.get(ZONE_LABEL).map(String::as_str),
            Some("eu-west-1b")
        );

        assert!(Selector::locality(&["us-east-1"]).matches(&p));
        assert!(Selector::locality(&["us-east-1", "us-east-1a"]).matches(&p));
        assert!(!Selector::locality(&["us-east-1", "us-east-1b"]).matches(&p));
        assert!(!Selector::locality(&["eu-west-1"]).matches(&p));
        assert!(
            Selector::locality(&["us-east-1", "us-east-1a"]).specificity()
                > Selector::locality(&["us-east-1"]).specificity()
        );
        let bare = ProxyInfo::from_node(&node("sidecar~ip~a.ns1~d", None, &[]));
        assert_eq!(bare.locality, Locality::default());
        assert!(!Selector::locality(&["us-east-1"]).matches(&bare));
        assert_eq!(
            Selector::locality(&["us-east-1", "us-east-1a"]).to_string(),
            "locality=us-east-1/us-east-1a"
        );
    }
}
