//! VirtualService `corsPolicy` as the route's per-filter config of Envoy's CORS filter
//! (`envoy.filters.http.cors`, in every HTTP filter chain: see `http_filters.rs`), as
//! istiod's `TranslateCORSPolicy` builds it.

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::google::protobuf::BoolValue;

use super::convert::fractional_percent;
use super::matching::string_matcher;
use crate::model::routing::{Cors, Fraction};

pub fn cors_policy(cors: &Cors) -> CorsPolicy {
    CorsPolicy {
        allow_origin_string_match: cors.allow_origins.iter().map(string_matcher).collect(),
        allow_methods: cors.allow_methods.join(","),
        allow_headers: cors.allow_headers.join(","),
        expose_headers: cors.expose_headers.join(","),
        max_age: cors
            .max_age
            .map(|d| d.as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: cors.allow_credentials.map(|value| BoolValue { value }),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(fractional_percent(Fraction::ALL)),
            ..Default::default()
        }),
        // Preflights from origins not allowed go on to the service unless told to be
        // ignored (Istio keeps Envoy's behaviour before 1.30).
        forward_not_matching_preflights: Some(BoolValue {
            value: !cors.ignore_unmatched_preflights,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

    use super::*;
    use crate::model::routing::StringMatch;

    #[test]
    fn lists_are_joined_and_max_age_is_in_seconds() {
        let cors = Cors {
            allow_origins: vec![
                StringMatch::Exact("https://a.example".into()),
                StringMatch::Regex(r"https://.*\.b\.example".into()),
            ],
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["x-a".into(), "x-b".into()],
            expose_headers: vec!["x-c".into()],
            max_age: Some(Duration::from_secs(86_400)),
            allow_credentials: Some(true),
            ignore_unmatched_preflights: false,
        };
        let out = cors_policy(&cors);
        let origins: Vec<_> = out
            .allow_origin_string_match
            .iter()
            .map(|m| m.match_pattern.clone())
            .collect();
        assert!(matches!(&origins[0], Some(MatchPattern::Exact(o)) if o == "https://a.example"));
        assert!(
            matches!(&origins[1], Some(MatchPattern::SafeRegex(r)) if r.regex == r"https://.*\.b\.example")
        );
        assert_eq!(out.allow_methods, "GET,POST");
        assert_eq!(out.allow_headers, "x-a,x-b");
        assert_eq!(out.expose_headers, "x-c");
        assert_eq!(out.max_age, "86400");
        assert_eq!(out.allow_credentials, Some(BoolValue { value: true }));
        assert_eq!(
            out.forward_not_matching_preflights,
            Some(BoolValue { value: true })
        );
        let enabled = out.filter_enabled.and_then(|f| f.default_value);
        assert_eq!(enabled.map(|f| f.numerator), Some(100));
    }

    #[test]
    fn unset_fields_stay_unset_and_ignore_stops_forwarding() {
        let out = cors_policy(&Cors {
            ignore_unmatched_preflights: true,
            ..Default::default()
        });
        assert_eq!(out.max_age, "");
        assert_eq!(out.allow_credentials, None);
        assert_eq!(
            out.forward_not_matching_preflights,
            Some(BoolValue { value: false })
        );
    }
}
