//! CDS: a cluster per service port, and one per DestinationRule subset of it, with the
//! DestinationRule's traffic policy applied as istiod applies it (`cluster_traffic_policy.go`):
//! connection pool ([`pool`]), outlier detection ([`outlier`]), load balancer ([`lb`]) and
//! upstream TLS ([`tls`]), in that order.

mod lb;
mod outlier;
mod pool;
mod proxy_protocol;
mod sni_dnat;

pub use pool::apply_inbound;
pub(super) mod tls;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::{
    LocalityConfigSpecifier, LocalityWeightedLbConfig,
};
use envoy_types::pb::envoy::config::core::v3::{Http1ProtocolOptions, Http2ProtocolOptions};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::util::pack_any;

use super::{
    RuleScope, ServiceCluster, ads_config_source, endpoint, rule_scopes, service_clusters_in,
};
use crate::model::DestinationRule;
use crate::model::peer_authentication::MtlsMode;
use crate::model::traffic_policy::Policy;
use crate::model::{Mesh, Resolution, Service};

/// Istio's default connect timeout (MeshConfig `connectTimeout`).
const CONNECT_TIMEOUT: Duration = Duration {
    seconds: 10,
    nanos: 0,
};

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Every cluster of the mesh for proxies without a locality.
#[cfg(test)]
pub fn clusters(mesh: &Mesh) -> Vec<(String, Cluster)> {
    super::service_clusters(mesh)
        .map(|c| cluster(mesh, c))
        .collect()
}

/// One cluster, for the proxies `key` names (the default: every proxy; a more specific
/// variant of the same name wins).
#[derive(Clone)]
pub struct ClusterVariant {
    pub name: String,
    pub key: endpoint::VariantKey,
    pub cluster: Cluster,
}

/// The clusters of one service, per scope of its DestinationRule (`rule_scopes`). A cluster
/// whose TLS reads a Secret (`credentialName`) comes twice: gateway proxies' with it, and
/// sidecars' without (see `tls`), unless its rule selects workloads: those read the Secret
/// whatever their role, as with istiod.
pub fn clusters_of(mesh: &Mesh, service: &Service) -> Vec<ClusterVariant> {
    let mut out = Vec::new();
    let auto_mtls = auto_mtls(mesh, service);
    let cluster_in = |c, rule, reads_secrets| {
        let purpose = Purpose::Service {
            reads_secrets,
            auto_mtls,
        };
        cluster_in(mesh, c, rule, purpose)
    };
    for scope in rule_scopes(mesh, &service.host) {
        for c in service_clusters_in(service, scope.rule) {
            let port = c.port.number;
            // A rule selecting workloads gives its Secret to the sidecars it selects too.
            if scope.workload.is_some() {
                let (name, cluster) = cluster_in(c, scope.rule, true);
                out.extend(locality_variants(port, name, cluster, &scope));
                continue;
            }
            // Most rules name no Secret: their clusters' policies are not merged twice.
            let names_secrets = (scope.rule)
                .and_then(|r| r.traffic_policy.as_ref())
                .is_some_and(|p| !p.credentials.is_empty());
            let reads_secret = names_secrets
                && policy_in(scope.rule, subset_of(&c.name), port)
                    .tls
                    .is_some_and(|tls| tls.credential().is_some());
            if reads_secret {
                let (name, cluster) = cluster_in(c.clone(), scope.rule, true);
                let for_gateways = locality_variants(port, name, cluster, &scope);
                out.extend(for_gateways.into_iter().map(|mut v| {
                    v.key.role = Some(capstan_xds::Role::Router);
                    v
                }));
            }
            let (name, cluster) = cluster_in(c, scope.rule, false);
            out.extend(locality_variants(port, name, cluster, &scope));
        }
    }
    out.extend(sni_dnat::clusters(mesh, service));
    out
}

/// Whether clients originate the mesh's mutual TLS to `service`'s endpoints that take it,
/// where no DestinationRule sets TLS (istiod's auto mTLS): not to a service outside the mesh,
/// one whose clients go where they dialled (no endpoints to tell apart), or one whose
/// namespace's (or the mesh's) PeerAuthentication is DISABLE; and only where some endpoint
/// says it has a sidecar (`security.istio.io/tlsMode: istio`). istiod sets the transport socket
/// matches on every such cluster; without such an endpoint they would select plain text
/// anyway, and proxies without an agent (no `sds-grpc` cluster) keep clusters they can load.
pub fn auto_mtls(mesh: &Mesh, service: &Service) -> bool {
    mesh.settings.enable_auto_mtls
        && !service.mesh_external
        && service.resolution != Resolution::Passthrough
        && service.endpoints.iter().any(endpoint::has_identity)
        && mesh.namespace_mtls(service.namespace()) != MtlsMode::Disable
}

/// A cluster that carries its endpoints (DNS) once per locality its proxies can be told
/// apart by, as EDS assignments are (`endpoint::locality`); any other cluster once.
fn locality_variants(
    port: u32,
    name: String,
    cluster: Cluster,
    scope: &RuleScope<'_>,
) -> Vec<ClusterVariant> {
    let policy = policy_in(scope.rule, subset_of(&name), port);
    let outlier = policy.outlier_detection.is_some();
    let rules = policy
        .locality_lb()
        .filter(|rules| endpoint::locality_applies(rules, outlier));
    let (Some(rules), Some(assignment)) = (rules, cluster.load_assignment.as_ref()) else {
        return vec![ClusterVariant {
            name,
            key: endpoint::VariantKey::in_scope(scope),
            cluster,
        }];
    };
    endpoint::locality_variants(assignment, None, &rules)
        .into_iter()
        .map(|(key, assignment)| ClusterVariant {
            name: name.clone(),
            key: key.scoped(scope),
            cluster: Cluster {
                load_assignment: Some(assignment),
                ..cluster.clone()
            },
        })
        .collect()
}

/// The subset of a cluster named `outbound|port|subset|host`, or after its SNI
/// (`outbound_.port_.subset_.host`, see [`sni_dnat`]); `None` for the whole service.
fn subset_of(name: &str) -> Option<&str> {
    let subset = match name.strip_prefix("outbound_.") {
        // Neither a port nor a subset name (a DNS label) has an underscore.
        Some(rest) => rest.split("_.").nth(1),
        None => name.split('|').nth(2),
    };
    subset.filter(|s| !s.is_empty())
}

/// `rule`'s traffic policy merged for the subset and port (no rule: every setting at
/// istiod's default).
pub(crate) fn policy_in(rule: Option<&DestinationRule>, subset: Option<&str>, port: u32) -> Policy {
    rule.and_then(|dr| dr.traffic_policy.as_ref())
        .and_then(|p| p.for_cluster(subset, port))
        .unwrap_or_default()
}

#[cfg(test)]
fn cluster(mesh: &Mesh, spec: ServiceCluster<'_>) -> (String, Cluster) {
    let rule = mesh.rule_for(&spec.service.host, None);
    let auto_mtls = auto_mtls(mesh, spec.service);
    let purpose = Purpose::Service {
        reads_secrets: false,
        auto_mtls,
    };
    cluster_in(mesh, spec, rule, purpose)
}

/// What a cluster is built for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Purpose {
    /// The service's own `outbound|…` cluster: for sidecars, or (`reads_secrets`) for
    /// proxies that may read a Secret; `auto_mtls`: see [`auto_mtls`].
    Service {
        reads_secrets: bool,
        auto_mtls: bool,
    },
    /// An AUTO_PASSTHROUGH gateway's SNI-DNAT cluster (see [`sni_dnat`]).
    SniDnat,
}

/// The cluster of `spec` for `purpose`.
fn cluster_in(
    mesh: &Mesh,
    spec: ServiceCluster<'_>,
    rule: Option<&DestinationRule>,
    purpose: Purpose,
) -> (String, Cluster) {
    let subset = spec.subset().map(str::to_string);
    let subset = subset.as_deref();
    let ServiceCluster {
        name,
        service,
        port,
        labels,
    } = spec;
    let name = match purpose {
        Purpose::SniDnat => tls::istio_sni(port.number, subset, &service.host),
        Purpose::Service { .. } => name,
    };
    let mut cluster = Cluster {
        name: name.clone(),
        connect_timeout: Some(CONNECT_TIMEOUT),
        lb_policy: LbPolicy::RoundRobin as i32,
        common_lb_config: Some(CommonLbConfig::default()),
        ..Default::default()
    };
    match service.resolution {
        Resolution::Static => {
            cluster.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
            cluster.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ads_config_source()),
                service_name: name.clone(),
            });
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            // Envoy resolves the names itself; the endpoints travel inside the cluster.
            let discovery = if service.resolution == Resolution::Dns {
                DiscoveryType::StrictDns
            } else {
                DiscoveryType::LogicalDns
            };
            cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(discovery as i32));
            // Envoy's default prefers IPv6: a name with both records (`localhost`, most
            // dual-stack hosts) would go to an IPv6 address an IPv4 workload never listens on.
            // istiod picks the family from the proxy's addresses; IPv4 first serves both.
            cluster.dns_lookup_family =
                envoy_types::pb::envoy::config::cluster::v3::cluster::DnsLookupFamily::V4Preferred
                    as i32;
            let mut assignment = endpoint::load_assignment(mesh, &name, service, port, labels);
            if discovery == DiscoveryType::LogicalDns {
                // A logical DNS cluster takes exactly one name.
                assignment.endpoints.truncate(1);
                if let Some(group) = assignment.endpoints.first_mut() {
                    group.lb_endpoints.truncate(1);
                }
            }
            cluster.load_assignment = Some(assignment);
        }
        Resolution::Passthrough => {
            // Traffic goes where the client sent it.
            cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            ));
            cluster.lb_policy = LbPolicy::ClusterProvided as i32;
        }
    }
    let mut http_options = HttpProtocolOptions::default();
    if port.is_http2() {
        set_http2(&mut http_options);
    }
    let policy = policy_in(rule, subset, port.number);
    pool::apply(
        &mut cluster,
        &mut http_options,
        policy.connection_pool.as_ref(),
    );
    if let Some(budget) = &policy.retry_budget {
        pool::apply_retry_budget(&mut cluster, budget);
    }
    outlier::apply(&mut cluster, policy.outlier_detection.as_ref());
    outlier::apply_error_codes(&mut http_options, policy.outlier_detection.as_ref());
    lb::apply(&mut cluster, policy.load_balancer.as_ref());
    // Only assignments (EDS, or a DNS cluster's own) carry the locality weights; an original
    // destination cluster has none, and Envoy would send a weighed cluster nothing.
    if (cluster.eds_cluster_config.is_some() || cluster.load_assignment.is_some())
        && let Some(rules) = policy.locality_lb()
        && endpoint::weighs_localities(&rules, policy.outlier_detection.is_some())
    {
        cluster
            .common_lb_config
            .get_or_insert_default()
            .locality_config_specifier = Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
            LocalityWeightedLbConfig {},
        ));
    }
    let Purpose::Service {
        reads_secrets,
        auto_mtls,
    } = purpose
    else {
        // The client's own mutual TLS passes through: no TLS (or PROXY protocol) of its own.
        if let Some(assignment) = &mut cluster.load_assignment {
            endpoint::keep_mutual_tls_endpoints(assignment, &policy);
        }
        set_protocol_options(&mut cluster, http_options);
        return (name, cluster);
    };
    let target = tls::Target {
        service,
        port: port.number,
        subset,
        trust_domains: &mesh.settings.trust_domains,
        http2: is_http2(&http_options),
        reads_secrets,
    };
    match &policy.tls {
        Some(settings) => tls::apply(&mut cluster, &mut http_options, settings, &target),
        None if auto_mtls => tls::apply_auto(&mut cluster, &target),
        None => {}
    }
    if let Some(version) = policy.proxy_protocol {
        proxy_protocol::apply(&mut cluster, version);
    }
    set_protocol_options(&mut cluster, http_options);
    (name, cluster)
}

/// Makes `options` the cluster's HTTP protocol options, unless they are the defaults.
fn set_protocol_options(cluster: &mut Cluster, mut options: HttpProtocolOptions) {
    if options == HttpProtocolOptions::default() {
        return;
    }
    // Envoy requires the upstream protocol to be chosen: HTTP/1.1 unless set already.
    if options.upstream_protocol_options.is_none() {
        options.upstream_protocol_options = Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::HttpProtocolOptions(
                    Http1ProtocolOptions::default(),
                )),
            },
        ));
    }
    cluster
        .typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.into(), pack_any(options));
}

/// Makes the cluster speak HTTP/2 upstream, unless its protocol is already chosen.
fn set_http2(options: &mut HttpProtocolOptions) {
    if options.upstream_protocol_options.is_none() {
        options.upstream_protocol_options = Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        ));
    }
}

/// A duration as protobuf's.
pub fn proto_duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Whether the options make an HTTP/2 cluster (istiod's `isHttp2Cluster`).
fn is_http2(options: &HttpProtocolOptions) -> bool {
    matches!(
        &options.upstream_protocol_options,
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(_)),
            }
        ))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::test_support::{REVIEWS, mesh};

    fn discovery(c: &Cluster) -> DiscoveryType {
        match c.cluster_discovery_type {
            Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).expect("known type"),
            _ => panic!("no discovery type"),
        }
    }

    #[test]
    fn the_subset_is_read_from_either_form_of_cluster_name() {
        let host = "reviews.bookinfo.svc.cluster.local";
        assert_eq!(subset_of(&format!("outbound|9080|v1|{host}")), Some("v1"));
        assert_eq!(subset_of(&format!("outbound|9080||{host}")), None);
        assert_eq!(
            subset_of(&format!("outbound_.9080_.v1_.{host}")),
            Some("v1")
        );
        assert_eq!(subset_of(&format!("outbound_.9080_._.{host}")), None);
    }

    #[test]
    fn static_service_has_an_eds_cluster_per_port_and_subset() {
        let clusters = clusters(&mesh(REVIEWS));
        let names: Vec<&str> = clusters.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "outbound|9080||reviews.bookinfo.svc.cluster.local",
                "outbound|9080|v1|reviews.bookinfo.svc.cluster.local",
                "outbound|9080|v2|reviews.bookinfo.svc.cluster.local",
                "outbound|9080|v3|reviews.bookinfo.svc.cluster.local",
            ]
        );
        for (name, c) in &clusters {
            assert_eq!(discovery(c), DiscoveryType::Eds);
            assert_eq!(
                c.eds_cluster_config
                    .as_ref()
                    .map(|e| e.service_name.as_str()),
                Some(name.as_str())
            );
        }
    }

    #[test]
    fn dns_service_carries_its_endpoints_and_grpc_speaks_http2() {
        let clusters = clusters(&mesh(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  ports:
  - {number: 443, name: grpc, protocol: GRPC}
  resolution: DNS
"#,
        ));
        assert_eq!(clusters.len(), 1);
        let (name, c) = &clusters[0];
        assert_eq!(name, "outbound|443||api.example.com");
        assert_eq!(discovery(c), DiscoveryType::StrictDns);
        assert_eq!(
            c.dns_lookup_family,
            envoy_types::pb::envoy::config::cluster::v3::cluster::DnsLookupFamily::V4Preferred
                as i32,
            "IPv4 first: an IPv4 workload is not on the name's IPv6 address"
        );
        let endpoints = &c
            .load_assignment
            .as_ref()
            .expect("inline endpoints")
            .endpoints;
        assert_eq!(
            endpoints[0].lb_endpoints.len(),
            1,
            "the host itself is resolved"
        );
        assert_eq!(upstream_protocol(c), Some(Upstream::Http2));
    }

    #[test]
    fn http_ports_get_no_protocol_options() {
        for (name, c) in clusters(&mesh(REVIEWS)) {
            assert_eq!(upstream_protocol(&c), None, "{name}");
        }
    }

    #[derive(Debug, PartialEq)]
    enum Upstream {
        Http2,
        /// Anything else, as its debug text.
        Other(String),
    }

    /// The upstream protocol a cluster's HttpProtocolOptions ask for, if it has any.
    fn upstream_protocol(c: &Cluster) -> Option<Upstream> {
        use prost::Message;
        let any = c
            .typed_extension_protocol_options
            .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")?;
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        );
        let options = HttpProtocolOptions::decode(any.value.as_slice()).expect("decodes");
        Some(match options.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(_)),
            })) => Upstream::Http2,
            other => Upstream::Other(format!("{other:?}")),
        })
    }

    const POLICY_DR: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool: {tcp: {maxConnections: 5}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      outlierDetection: {consecutive5xxErrors: 2}
      portLevelSettings:
      - port: {number: 9080}
        tls: {mode: ISTIO_MUTUAL}
  - name: v2
    labels: {version: v2}
"#;

    fn policy(c: &Cluster) -> LbPolicy {
        LbPolicy::try_from(c.lb_policy).expect("known policy")
    }

    fn max_connections(c: &Cluster) -> Option<u32> {
        c.circuit_breakers
            .as_ref()
            .and_then(|b| b.thresholds.first())
            .and_then(|t| t.max_connections.as_ref())
            .map(|v| v.value)
    }

    #[test]
    fn traffic_policy_is_merged_per_subset_and_port() {
        let yaml = REVIEWS
            .split("---")
            .next()
            .expect("service entry")
            .to_string();
        let clusters: std::collections::BTreeMap<String, Cluster> =
            clusters(&mesh(&format!("{yaml}---{POLICY_DR}")))
                .into_iter()
                .collect();
        let whole = &clusters["outbound|9080||reviews.bookinfo.svc.cluster.local"];
        assert_eq!(policy(whole), LbPolicy::Random);
        assert_eq!(max_connections(whole), Some(5));
        assert!(whole.outlier_detection.is_none() && whole.transport_socket.is_none());
        // v1's port-level settings replace everything: only TLS, defaults elsewhere.
        let v1 = &clusters["outbound|9080|v1|reviews.bookinfo.svc.cluster.local"];
        assert_eq!(policy(v1), LbPolicy::LeastRequest);
        assert_eq!(max_connections(v1), Some(u32::MAX));
        assert!(v1.outlier_detection.is_none());
        assert!(v1.transport_socket.is_some());
        // v2 has no policy of its own: the top level's.
        let v2 = &clusters["outbound|9080|v2|reviews.bookinfo.svc.cluster.local"];
        assert_eq!(policy(v2), LbPolicy::Random);
        assert_eq!(max_connections(v2), Some(5));
    }

    #[test]
    fn clusters_without_a_rule_get_istiods_defaults() {
        for (name, c) in clusters(&mesh(REVIEWS)) {
            assert_eq!(policy(&c), LbPolicy::LeastRequest, "{name}");
            assert_eq!(max_connections(&c), Some(u32::MAX), "{name}");
            assert_eq!(c.connect_timeout, Some(CONNECT_TIMEOUT), "{name}");
            assert!(c.outlier_detection.is_none() && c.transport_socket.is_none());
        }
    }

    /// Editing only a DestinationRule's policy rebuilds its host's clusters incrementally.
    #[test]
    fn a_policy_edit_rebuilds_the_hosts_clusters() {
        use crate::index::{Event, IstioRecord, Record};
        use crate::reconcile::Pipeline;
        use capstan_xds::{SnapshotCache, type_index, type_url};
        use prost::Message;

        let event = |yaml: &str| {
            let document = capstan_crds::parse_single("t.yaml", yaml).expect("valid");
            Event::Apply(Record::Istio(IstioRecord::valid(document.object)))
        };
        let options = crate::translate::test_support::options();
        let mut pipeline = Pipeline::new(options, "cluster.local");
        let cache = SnapshotCache::new();
        cache.replace(pipeline.full());
        let mut parts = REVIEWS.split("---");
        let (se, dr) = (parts.next().expect("se"), parts.next().expect("dr"));
        for yaml in [se, dr] {
            let changes = pipeline.index.handle(event(yaml));
            cache.apply(pipeline.update(&changes));
        }
        let cluster_named = |name: &str| {
            let state = cache.current();
            let index = type_index(type_url::CLUSTER).expect("cluster type");
            let entry = state.snapshot.get(index, name).expect("cluster served");
            Cluster::decode(entry.variants()[0].1.body()).expect("decodes")
        };
        let v2 = "outbound|9080|v2|reviews.bookinfo.svc.cluster.local";
        assert_eq!(policy(&cluster_named(v2)), LbPolicy::LeastRequest);

        let changes = pipeline.index.handle(event(POLICY_DR));
        let update = pipeline.update(&changes);
        assert!(!update.is_empty(), "the policy edit changes something");
        cache.apply(update);
        let after = cluster_named(v2);
        assert_eq!(policy(&after), LbPolicy::Random);
        assert_eq!(max_connections(&after), Some(5));
        assert!(
            cluster_named("outbound|9080|v1|reviews.bookinfo.svc.cluster.local")
                .transport_socket
                .is_some()
        );
    }
}
