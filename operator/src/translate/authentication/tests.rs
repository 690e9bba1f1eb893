use capstan_crds::security::request_authentication::{JwtHeader as SpecHeader, JwtRule};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;

use super::*;

fn rule(issuer: &str) -> JwtRule {
    JwtRule {
        issuer: issuer.into(),
        jwks: "{\"keys\": []}".into(),
        ..Default::default()
    }
}

fn decoded(filter: &HttpFilter) -> JwtAuthentication {
    let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
        panic!("typed config");
    };
    assert_eq!(any.type_url, JwtAuthentication::type_url());
    JwtAuthentication::decode(any.value.as_slice()).expect("decodes")
}

fn requirement(config: &JwtAuthentication) -> &RequiresType {
    match &config.rules[0].requirement_type {
        Some(RequirementType::Requires(r)) => r.requires_type.as_ref().expect("a requirement"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn one_rule_takes_its_token_or_none() {
    assert!(jwt_filter([].iter()).is_none());
    let mut only = rule("https://issuer.example.com");
    only.from_headers = vec![SpecHeader {
        name: "x-token".into(),
        prefix: "Bearer ".into(),
    }];
    let config = decoded(&jwt_filter([only].iter()).expect("a filter"));
    let provider = &config.providers["origins-0"];
    assert_eq!(provider.issuer, "https://issuer.example.com");
    assert_eq!(provider.payload_in_metadata, "payload");
    assert_eq!(provider.from_headers[0].value_prefix, "Bearer ");
    let RequiresType::RequiresAny(any) = requirement(&config) else {
        panic!("{:?}", requirement(&config));
    };
    assert_eq!(
        any.requirements[0].requires_type,
        Some(RequiresType::ProviderName("origins-0".into()))
    );
    assert!(matches!(
        any.requirements[1].requires_type,
        Some(RequiresType::AllowMissing(_))
    ));
    assert!(config.bypass_cors_preflight);
}

#[test]
fn several_rules_take_any_one_token_or_each_valid_or_missing() {
    let rules = [rule("a"), rule("b"), rule("c")];
    let filter = jwt_filter(rules.iter()).expect("a filter");
    let config = decoded(&filter);
    assert_eq!(config.providers.len(), 3);
    let RequiresType::RequiresAny(any) = requirement(&config) else {
        panic!("{:?}", requirement(&config));
    };
    assert_eq!(
        any.requirements.len(),
        4,
        "three providers, then all of them"
    );
    assert!(matches!(
        any.requirements[3].requires_type,
        Some(RequiresType::RequiresAll(_))
    ));
    // The providers map comes out in name order, the same bytes every time.
    assert_eq!(jwt_filter(rules.iter()), Some(filter));
}

#[test]
fn a_jwks_uri_is_fetched_through_the_mesh_cluster_of_its_host_and_port() {
    let remote = JwtRule {
        issuer: "i".into(),
        jwks_uri: "https://keys.example.com/.well-known/jwks.json".into(),
        timeout: Some("2s".into()),
        ..Default::default()
    };
    let config = decoded(&jwt_filter([remote].iter()).expect("a filter"));
    let Some(JwksSourceSpecifier::RemoteJwks(jwks)) =
        &config.providers["origins-0"].jwks_source_specifier
    else {
        panic!("remote JWKS");
    };
    let uri = jwks.http_uri.as_ref().expect("a URI");
    assert_eq!(
        uri.http_upstream_type,
        Some(HttpUpstreamType::Cluster(
            "outbound|443||keys.example.com".into()
        ))
    );
    assert_eq!(uri.timeout.map(|t| t.seconds), Some(2));
    assert_eq!(
        jwks_host_port("http://keys.bookinfo:8080/jwks"),
        Some(("keys.bookinfo".into(), 8080))
    );
    assert_eq!(
        jwks_host_port("http://keys.bookinfo/jwks"),
        Some(("keys.bookinfo".into(), 80))
    );
}
