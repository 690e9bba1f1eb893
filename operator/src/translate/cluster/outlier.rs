//! `outlierDetection` as istiod's `applyOutlierDetection`: consecutive 5xx and gateway errors
//! enforced at 100%, success-rate ejection off, and the panic threshold set to
//! `minHealthPercent` (0 unless set, which turns Envoy's panic mode off). Its
//! `outlierDetectionHttpErrorCodes` as istiod's `applyOutlierDetectionErrorCodes`: the
//! responses the cluster's outlier detection counts as errors, in its HTTP protocol options.

use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, OutlierDetection as Envoy};
use envoy_types::pb::envoy::config::common::matcher::v3::HttpHeadersMatch;
use envoy_types::pb::envoy::config::common::matcher::v3::MatchPredicate;
use envoy_types::pb::envoy::config::common::matcher::v3::match_predicate::{MatchSet, Rule};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::OutlierDetection as HttpOutlierDetection;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::UInt32Value;

use super::proto_duration;
use crate::model::traffic_policy::OutlierDetection;

fn value(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

/// Enforcement of a consecutive-errors rule: 100% when it counts errors, 0 when it is off.
fn enforcing(v: u32) -> Option<UInt32Value> {
    value(if v > 0 { 100 } else { 0 })
}

pub fn apply(cluster: &mut Cluster, outlier: Option<&OutlierDetection>) {
    let Some(o) = outlier else {
        return;
    };
    let mut out = Envoy {
        enforcing_success_rate: value(0),
        ..Default::default()
    };
    if let Some(v) = o.consecutive_5xx_errors {
        out.consecutive_5xx = value(v);
        out.enforcing_consecutive_5xx = enforcing(v);
    }
    if let Some(v) = o.consecutive_gateway_errors {
        out.consecutive_gateway_failure = value(v);
        out.enforcing_consecutive_gateway_failure = enforcing(v);
    }
    out.interval = o.interval.map(proto_duration);
    out.base_ejection_time = o.base_ejection_time.map(proto_duration);
    if o.max_ejection_percent > 0 {
        out.max_ejection_percent = value(o.max_ejection_percent);
    }
    if o.split_external_local_origin_errors {
        out.split_external_local_origin_errors = true;
        if let Some(v) = o.consecutive_local_origin_failures.filter(|v| *v > 0) {
            out.consecutive_local_origin_failure = value(v);
            out.enforcing_consecutive_local_origin_failure = value(100);
        }
        out.enforcing_local_origin_success_rate = value(0);
    }
    cluster.outlier_detection = Some(out);
    // istiod sets the panic threshold even to 0 (Envoy's default is 50%): with few endpoints
    // per service, panic mode would send traffic to the ejected ones.
    cluster
        .common_lb_config
        .get_or_insert_with(CommonLbConfig::default)
        .healthy_panic_threshold = Some(Percent {
        value: f64::from(o.min_health_percent),
    });
}

/// With `outlierDetectionHttpErrorCodes`, the responses outlier detection counts as errors
/// are those with one of the codes (any code: a 429 or a 404 too), and no longer every 5xx.
pub fn apply_error_codes(options: &mut HttpProtocolOptions, outlier: Option<&OutlierDetection>) {
    let Some(codes) = outlier
        .map(|o| &o.http_error_codes)
        .filter(|c| !c.is_empty())
    else {
        return;
    };
    let mut rules: Vec<MatchPredicate> = codes.iter().map(|code| status_is(*code)).collect();
    let matcher = if rules.len() == 1 {
        rules.remove(0)
    } else {
        MatchPredicate {
            rule: Some(Rule::OrMatch(MatchSet { rules })),
        }
    };
    options.outlier_detection = Some(HttpOutlierDetection {
        error_matcher: Some(matcher),
    });
}

/// A response whose `:status` is `code`.
fn status_is(code: u32) -> MatchPredicate {
    let status = HeaderMatcher {
        name: ":status".into(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(code.to_string())),
            ..Default::default()
        })),
        ..Default::default()
    };
    MatchPredicate {
        rule: Some(Rule::HttpResponseHeadersMatch(HttpHeadersMatch {
            headers: vec![status],
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn no_outlier_detection_leaves_the_cluster_alone() {
        let mut c = Cluster::default();
        apply(&mut c, None);
        assert_eq!(c, Cluster::default());
    }

    #[test]
    fn consecutive_errors_are_enforced_and_panic_mode_is_off() {
        let mut c = Cluster::default();
        apply(
            &mut c,
            Some(&OutlierDetection {
                consecutive_5xx_errors: Some(1),
                consecutive_gateway_errors: Some(0),
                interval: Some(Duration::from_millis(500)),
                base_ejection_time: Some(Duration::from_secs(2)),
                max_ejection_percent: 100,
                ..Default::default()
            }),
        );
        let o = c.outlier_detection.expect("outlier detection");
        assert_eq!(o.consecutive_5xx, value(1));
        assert_eq!(o.enforcing_consecutive_5xx, value(100));
        assert_eq!(o.consecutive_gateway_failure, value(0));
        assert_eq!(o.enforcing_consecutive_gateway_failure, value(0));
        assert_eq!(o.enforcing_success_rate, value(0));
        assert_eq!(o.interval.map(|d| d.nanos), Some(500_000_000));
        assert_eq!(o.base_ejection_time.map(|d| d.seconds), Some(2));
        assert_eq!(o.max_ejection_percent, value(100));
        assert!(!o.split_external_local_origin_errors);
        assert_eq!(
            c.common_lb_config.and_then(|l| l.healthy_panic_threshold),
            Some(Percent { value: 0.0 })
        );
    }

    #[test]
    fn local_origin_errors_split_when_asked() {
        let mut c = Cluster::default();
        apply(
            &mut c,
            Some(&OutlierDetection {
                split_external_local_origin_errors: true,
                consecutive_local_origin_failures: Some(2),
                min_health_percent: 30,
                ..Default::default()
            }),
        );
        let o = c.outlier_detection.expect("outlier detection");
        assert!(o.split_external_local_origin_errors);
        assert_eq!(o.consecutive_local_origin_failure, value(2));
        assert_eq!(o.enforcing_consecutive_local_origin_failure, value(100));
        assert_eq!(o.enforcing_local_origin_success_rate, value(0));
        assert_eq!(o.consecutive_5xx, None);
        assert_eq!(
            c.common_lb_config.and_then(|l| l.healthy_panic_threshold),
            Some(Percent { value: 30.0 })
        );
    }

    #[test]
    fn error_codes_become_the_error_matcher() {
        let mut options = HttpProtocolOptions::default();
        apply_error_codes(&mut options, Some(&OutlierDetection::default()));
        assert_eq!(
            options,
            HttpProtocolOptions::default(),
            "no codes: 5xx, Envoy's"
        );
        let codes = |codes: &[u32]| {
            let mut options = HttpProtocolOptions::default();
            let outlier = OutlierDetection {
                http_error_codes: codes.to_vec(),
                ..Default::default()
            };
            apply_error_codes(&mut options, Some(&outlier));
            options.outlier_detection.and_then(|o| o.error_matcher)
        };
        assert_eq!(codes(&[429]), Some(status_is(429)));
        let Some(MatchPredicate {
            rule: Some(Rule::OrMatch(set)),
        }) = codes(&[429, 503])
        else {
            panic!("two codes: either")
        };
        assert_eq!(set.rules, [status_is(429), status_is(503)]);
        let Some(Rule::HttpResponseHeadersMatch(m)) = status_is(404).rule else {
            panic!("a response header match")
        };
        assert_eq!(m.headers[0].name, ":status");
    }
}
