//! VirtualService `tcp` and `tls` routes in capstan's own types: connections routed by port
//! and, for TLS, by the SNI name of the client hello, never decrypted.

use std::collections::BTreeMap;

use capstan_crds::ObjectKey;
use capstan_crds::networking::virtual_service as api;

use super::{Problem, hostname};

/// One entry of `tcp` or `tls`: the first whose matches hold takes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRoute {
    /// OR-ed; none matches every connection.
    pub matches: Vec<StreamMatch>,
    pub destinations: Vec<Destination>,
}

/// Where a connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Fully qualified.
    pub host: String,
    pub subset: Option<String>,
    /// `None`: the service's only port.
    pub port: Option<u32>,
    /// As written (negative counts as 0); a split drops zero weights.
    pub weight: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamMatch {
    /// TLS routes: the client hello's server name must be one of these (wildcards allowed).
    pub sni_hosts: Vec<String>,
    /// The port the connection arrived on; `None`: any.
    pub port: Option<u32>,
    /// Overrides the VirtualService's gateways for this match; empty: no override.
    pub gateways: Vec<String>,
    /// `sourceNamespace`: the proxies (sidecars, gateways) of this namespace only.
    pub source_namespace: Option<String>,
    /// `sourceLabels`: the sidecars whose workload has these labels only (gateways do not
    /// read it, as with istiod).
    pub source_labels: BTreeMap<String, String>,
    /// `destinationSubnets`, each `address/length` (an address alone as its one-address
    /// range): on sidecars, connections to an address in one of them only (gateways do not
    /// read it, as with istiod).
    pub destination_subnets: Vec<String>,
}

impl StreamMatch {
    /// Whether its `sourceNamespace` (if any) names `caller`, the proxies' namespace (`None`:
    /// of a namespace no match names).
    pub fn names_caller(&self, caller: Option<&str>) -> bool {
        self.source_namespace
            .as_deref()
            .is_none_or(|ns| caller == Some(ns))
    }

    /// Whether it applies to sidecars: it names no gateways, or names `mesh`.
    pub fn for_mesh(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh")
    }

    /// Whether this match holds on `port` of the gateway (namespace, name), for a
    /// VirtualService of `namespace`.
    pub fn applies_on(&self, port: u32, gateway: (&str, &str), namespace: &str) -> bool {
        self.port.is_none_or(|p| p == port)
            && (self.gateways.is_empty()
                || super::gateway::names(&self.gateways, namespace, gateway))
    }
}

/// The `tcp` routes of VirtualService `key`.
pub fn tcp_routes(
    routes: &[api::TcpRoute],
    key: &ObjectKey,
    domain_suffix: &str,
) -> Vec<StreamRoute> {
    let routes = routes.iter().map(|r| (&r.matches[..], &r.route[..]));
    read_routes(routes, key, domain_suffix)
}

/// The `tls` routes of VirtualService `key`.
pub fn tls_routes(
    routes: &[api::TlsRoute],
    key: &ObjectKey,
    domain_suffix: &str,
) -> Vec<StreamRoute> {
    let routes = routes.iter().map(|r| (&r.matches[..], &r.route[..]));
    read_routes(routes, key, domain_suffix)
}

fn read_routes<'a, M: L4Match + 'a>(
    routes: impl Iterator<Item = (&'a [M], &'a [api::RouteDestination])>,
    key: &ObjectKey,
    domain_suffix: &str,
) -> Vec<StreamRoute> {
    routes
        .map(|(matches, destinations)| StreamRoute {
            matches: matches.iter().map(L4Match::read).collect(),
            destinations: read_destinations(destinations, &key.namespace, domain_suffix),
        })
        .collect()
}

/// A `tcp` or `tls` match as written.
trait L4Match {
    fn read(&self) -> StreamMatch;
    /// Whether it sets `sourceSubnet` (`tcp` only).
    fn sets_source_subnet(&self) -> bool {
        false
    }
}

impl L4Match for api::L4MatchAttributes {
    fn read(&self) -> StreamMatch {
        StreamMatch {
            sni_hosts: Vec::new(),
            port: (self.port != 0).then_some(self.port),
            gateways: self.gateways.clone(),
            source_namespace: source_namespace(&self.source_namespace),
            source_labels: self.source_labels.clone(),
            destination_subnets: subnets(&self.destination_subnets),
        }
    }

    fn sets_source_subnet(&self) -> bool {
        !self.source_subnet.is_empty()
    }
}

impl L4Match for api::TlsMatchAttributes {
    fn read(&self) -> StreamMatch {
        StreamMatch {
            sni_hosts: self
                .sni_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            port: (self.port != 0).then_some(self.port),
            gateways: self.gateways.clone(),
            source_namespace: source_namespace(&self.source_namespace),
            source_labels: self.source_labels.clone(),
            destination_subnets: subnets(&self.destination_subnets),
        }
    }
}

fn source_namespace(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

/// `destinationSubnets` as `address/length`, in order, each once (validation refuses what is
/// neither an address nor a range; such text is left out).
fn subnets(texts: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for text in texts {
        if let Some(subnet) = subnet(text).filter(|s| !out.contains(s)) {
            out.push(subnet);
        }
    }
    out
}

/// An address or range as `address/length`; `None` for neither.
pub fn subnet(text: &str) -> Option<String> {
    let (address, length) = match text.split_once('/') {
        Some((address, length)) => (address, Some(length)),
        None => (text, None),
    };
    let address: std::net::IpAddr = address.parse().ok()?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let length: u32 = match length {
        Some(length) => length.parse().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some(format!("{address}/{length}"))
}

/// The conditions of VirtualService `key`'s `tcp` and `tls` matches that are set and not
/// applied where the match applies: `sourceSubnet` anywhere (istiod does not apply it), and
/// on gateways `sourceNamespace`, `sourceLabels` and `destinationSubnets` (istiod's gateways
/// match on port and gateway only).
pub fn unapplied(key: &ObjectKey, spec: &api::VirtualServiceSpec) -> Vec<Problem> {
    let mut problems = Vec::new();
    let tcp = spec.tcp.iter().map(|r| &r.matches[..]);
    report_unapplied(("tcp", key), tcp, &spec.gateways, &mut problems);
    let tls = spec.tls.iter().map(|r| &r.matches[..]);
    report_unapplied(("tls", key), tls, &spec.gateways, &mut problems);
    problems
}

/// [`unapplied`] for the matches of each route of `list`.
fn report_unapplied<'a, M: L4Match + 'a>(
    (list, key): (&str, &ObjectKey),
    routes: impl Iterator<Item = &'a [M]>,
    vs_gateways: &[String],
    out: &mut Vec<Problem>,
) {
    for (i, matches) in routes.enumerate() {
        for (j, m) in matches.iter().enumerate() {
            let field = format!("spec.{list}[{i}].match[{j}]");
            let mut say = |name: &str, message: String| {
                out.push(Problem {
                    object: key.clone(),
                    field: format!("{field}.{name}"),
                    message,
                })
            };
            if m.sets_source_subnet() {
                say(
                    "sourceSubnet",
                    "sourceSubnet is not applied, as istiod does not apply it; the match holds \
                     without it"
                        .into(),
                );
            }
            let read = m.read();
            // The match's own gateways, else the VirtualService's; none at all: sidecars only.
            let gateways = if read.gateways.is_empty() {
                vs_gateways
            } else {
                &read.gateways[..]
            };
            if gateways.iter().all(|g| g == "mesh") {
                continue;
            }
            let on_gateways = [
                ("sourceNamespace", read.source_namespace.is_some()),
                ("sourceLabels", !read.source_labels.is_empty()),
                ("destinationSubnets", !read.destination_subnets.is_empty()),
            ];
            for (name, _) in on_gateways.into_iter().filter(|(_, set)| *set) {
                say(
                    name,
                    format!(
                        "{name} is not read by gateways, as istiod's gateways do not read it: \
                         on the gateways this match names it holds without it"
                    ),
                );
            }
        }
    }
}

fn read_destinations(
    route: &[api::RouteDestination],
    namespace: &str,
    domain_suffix: &str,
) -> Vec<Destination> {
    route
        .iter()
        .map(|d| Destination {
            host: hostname::resolve(&d.destination.host, namespace, domain_suffix),
            subset: (!d.destination.subset.is_empty()).then(|| d.destination.subset.clone()),
            port: d.destination.port.as_ref().map(|p| p.number),
            weight: u32::try_from(d.weight).unwrap_or(0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_crds::IstioObject;

    #[test]
    fn tls_and_tcp_routes_are_read_with_hosts_resolved() {
        let document = capstan_crds::parse_single(
            "vs.yaml",
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: shop}
spec:
  hosts: ["*.example.com"]
  gateways: [istio-system/edge]
  tls:
  - match: [{sniHosts: [Secure.example.com], port: 443}]
    route: [{destination: {host: secure, port: {number: 8443}}}]
  tcp:
  - match: [{port: 5432, sourceSubnet: 10.0.0.0/8}]
    route: [{destination: {host: db, subset: primary}, weight: 100}]
"#,
        )
        .expect("valid");
        let IstioObject::VirtualService(vs) = &document.object else {
            panic!("not a VirtualService");
        };
        let key = document.object.key();
        let tls = tls_routes(&vs.spec.tls, &key, "cluster.local");
        assert_eq!(tls[0].matches[0].sni_hosts, ["secure.example.com"]);
        assert_eq!(tls[0].destinations[0].host, "secure.shop.svc.cluster.local");
        assert_eq!(tls[0].destinations[0].port, Some(8443));
        let tcp = tcp_routes(&vs.spec.tcp, &key, "cluster.local");
        assert_eq!(tcp[0].destinations[0].subset.as_deref(), Some("primary"));
        assert_eq!(tcp[0].matches[0].port, Some(5432));
        let problems = unapplied(&key, &vs.spec);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "spec.tcp[0].match[0].sourceSubnet");
        assert!(tcp[0].matches[0].applies_on(5432, ("istio-system", "edge"), "shop"));
        assert!(!tcp[0].matches[0].applies_on(5433, ("istio-system", "edge"), "shop"));
    }

    #[test]
    fn source_namespace_and_source_labels_are_read() {
        let document = capstan_crds::parse_single(
            "vs.yaml",
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: shop}
spec:
  hosts: [db]
  tcp:
  - match: [{sourceNamespace: front, sourceLabels: {app: a}, destinationSubnets: [10.0.0.0/8]}]
    route: [{destination: {host: db2}}]
"#,
        )
        .expect("valid");
        let IstioObject::VirtualService(vs) = &document.object else {
            panic!("not a VirtualService");
        };
        let key = document.object.key();
        let tcp = tcp_routes(&vs.spec.tcp, &key, "cluster.local");
        assert_eq!(tcp[0].matches[0].source_namespace.as_deref(), Some("front"));
        let labels = BTreeMap::from([("app".to_string(), "a".to_string())]);
        assert_eq!(tcp[0].matches[0].source_labels, labels);
        assert_eq!(tcp[0].matches[0].destination_subnets, ["10.0.0.0/8"]);
        // For sidecars only: all of it applies.
        assert_eq!(unapplied(&key, &vs.spec), vec![]);
    }

    /// Gateways read none of a match's source or destination conditions (as istiod's): a
    /// match naming a gateway, by itself or through the VirtualService, is warned about each
    /// one set; a match for sidecars only is not.
    #[test]
    fn source_and_destination_conditions_on_gateways_are_warned() {
        let yaml = |gateways: &str| {
            format!(
                r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: shop}}
spec:
  hosts: [db]
  gateways: {gateways}
  tcp:
  - match:
    - {{sourceNamespace: front, sourceLabels: {{app: a}}}}
    - {{destinationSubnets: [10.0.0.0/8], gateways: [mesh]}}
    - {{sourceLabels: {{app: a}}, gateways: [edge]}}
    route: [{{destination: {{host: db2}}}}]
  tls:
  - match: [{{sniHosts: [db], destinationSubnets: [10.0.0.0/8]}}]
    route: [{{destination: {{host: db2}}}}]
"#
            )
        };
        let fields = |gateways: &str| {
            let document = capstan_crds::parse_single("vs.yaml", &yaml(gateways)).expect("valid");
            let IstioObject::VirtualService(vs) = &document.object else {
                panic!("not a VirtualService");
            };
            let problems = unapplied(&document.object.key(), &vs.spec);
            assert!(
                problems
                    .iter()
                    .all(|p| p.message.contains("not read by gateways")),
                "{problems:?}"
            );
            problems.into_iter().map(|p| p.field).collect::<Vec<_>>()
        };
        assert_eq!(
            fields("[mesh, istio-system/edge]"),
            [
                "spec.tcp[0].match[0].sourceNamespace",
                "spec.tcp[0].match[0].sourceLabels",
                "spec.tcp[0].match[2].sourceLabels",
                "spec.tls[0].match[0].destinationSubnets",
            ]
        );
        // Bound to sidecars only: only the match naming a gateway itself.
        assert_eq!(fields("[]"), ["spec.tcp[0].match[2].sourceLabels"]);
    }

    #[test]
    fn destination_subnets_are_read_as_ranges_each_once() {
        let texts = [
            "10.1.0.0/16",
            "10.2.0.7",
            "10.1.0.0/16",
            "fd00::1",
            "10.0.0.0/33",
            "db",
        ];
        let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        assert_eq!(
            subnets(&texts),
            ["10.1.0.0/16", "10.2.0.7/32", "fd00::1/128"]
        );
    }
}
