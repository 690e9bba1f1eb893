//! CDS: a cluster per service port, and one per DestinationRule subset of it.

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::util::pack_any;

use super::{ServiceCluster, ads_config_source, endpoint, service_clusters_of};
use crate::model::{Mesh, Resolution, Service};

/// Istio's default connect timeout.
const CONNECT_TIMEOUT: Duration = Duration {
    seconds: 10,
    nanos: 0,
};

/// Every cluster of the mesh (what a full build encodes, one host at a time).
#[cfg(test)]
pub fn clusters(mesh: &Mesh) -> Vec<(String, Cluster)> {
    super::service_clusters(mesh).map(cluster).collect()
}

/// The clusters of one service.
pub fn clusters_of(mesh: &Mesh, service: &Service) -> Vec<(String, Cluster)> {
    service_clusters_of(mesh, service).map(cluster).collect()
}

fn cluster(spec: ServiceCluster<'_>) -> (String, Cluster) {
    let ServiceCluster {
        name,
        service,
        port,
        labels,
    } = spec;
    let mut cluster = Cluster {
        name: name.clone(),
        connect_timeout: Some(CONNECT_TIMEOUT),
        lb_policy: LbPolicy::RoundRobin as i32,
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
            let mut assignment = endpoint::load_assignment(&name, service, port, labels);
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
    if port.is_http2() {
        let options = HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        };
        cluster.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
            pack_any(options),
        );
    }
    (name, cluster)
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
}
