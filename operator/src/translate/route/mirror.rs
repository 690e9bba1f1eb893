//! VirtualService `mirror`/`mirrors` as the route action's request mirror policies, as
//! istiod builds them: the mirror's cluster, its share of requests, and trace sampling off.

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::route_action::RequestMirrorPolicy;
use envoy_types::pb::google::protobuf::BoolValue;

use super::action::cluster_for;
use super::convert::fractional_percent;
use crate::model::Mesh;
use crate::model::routing::Mirror;

/// One policy per mirror, in order, for requests arriving for service port `port`.
pub fn mirror_policies(mesh: &Mesh, mirrors: &[Mirror], port: u32) -> Vec<RequestMirrorPolicy> {
    mirrors
        .iter()
        .map(|m| RequestMirrorPolicy {
            cluster: cluster_for(mesh, &m.host, m.subset.as_deref(), m.port, port),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(fractional_percent(m.percentage)),
                ..Default::default()
            }),
            trace_sampled: Some(BoolValue { value: false }),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;

    use super::*;
    use crate::model::routing::Fraction;
    use crate::translate::test_support::{REVIEWS as REVIEWS_YAML, mesh};

    const REVIEWS: &str = "reviews.bookinfo.svc.cluster.local";

    fn mirror(subset: Option<&str>, port: Option<u32>, percentage: Fraction) -> Mirror {
        Mirror {
            host: REVIEWS.to_string(),
            subset: subset.map(str::to_string),
            port,
            percentage,
        }
    }

    #[test]
    fn each_mirror_names_its_cluster_and_share() {
        let mesh = mesh(REVIEWS_YAML);
        let policies = mirror_policies(
            &mesh,
            &[
                mirror(Some("v2"), None, Fraction::ALL),
                mirror(None, Some(9090), Fraction::PerMillion(250_000)),
            ],
            9080,
        );
        let clusters: Vec<&str> = policies.iter().map(|p| p.cluster.as_str()).collect();
        assert_eq!(
            clusters,
            [
                "outbound|9080|v2|reviews.bookinfo.svc.cluster.local",
                "outbound|9090||reviews.bookinfo.svc.cluster.local",
            ]
        );
        let shares: Vec<(u32, i32)> = policies
            .iter()
            .map(|p| {
                let f = p
                    .runtime_fraction
                    .as_ref()
                    .and_then(|r| r.default_value.as_ref())
                    .expect("a share");
                (f.numerator, f.denominator)
            })
            .collect();
        assert_eq!(
            shares,
            [
                (100, DenominatorType::Hundred as i32),
                (250_000, DenominatorType::Million as i32)
            ]
        );
        assert!(
            policies
                .iter()
                .all(|p| p.trace_sampled == Some(BoolValue { value: false }))
        );
    }
}
