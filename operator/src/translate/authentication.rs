//! RequestAuthentication on a workload's inbound side: Envoy's `jwt_authn` filter, built as
//! istiod builds it (`convertToEnvoyJwtConfig`): one provider per JWT rule (`origins-<i>`), the
//! payload of a valid token in the request's metadata (`payload`, what AuthorizationPolicy's
//! request principals and claims match), and a requirement that lets a request without a
//! token through but refuses one whose token no provider accepts (401). Whether a token is
//! required is AuthorizationPolicy's business (`requestPrincipals`).
//!
//! Keys: `jwks` inline, or `jwksUri` fetched by Envoy through the mesh's cluster for the URI's
//! host and port (as istiod does with `PILOT_JWT_ENABLE_REMOTE_JWKS=envoy`; its default has
//! istiod fetch the keys and inline them, which capstan does not do). A `jwksUri` host no
//! service has is reported: Envoy cannot fetch it, and refuses every token.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
use envoy_types::pb::envoy::config::core::v3::{DataSource, HttpUri};
use envoy_types::pb::envoy::config::route::v3::RouteMatch;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_provider::{
    JwksSourceSpecifier, NormalizePayload,
};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_requirement::RequiresType;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::requirement_rule::RequirementType;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider, JwtRequirement,
    JwtRequirementAndList, JwtRequirementOrList, RemoteJwks, RequirementRule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::google::protobuf::{Any, Duration, Empty};
use prost::{Message, Name};

use super::sorted_map;
use crate::model::Mesh;
use capstan_crds::security::request_authentication::JwtRule;

/// The filter name, and the metadata key the payload goes under.
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
pub const JWT_PAYLOAD: &str = "payload";

/// The `jwt_authn` filter for these rules (none: no filter).
pub fn jwt_filter<'a>(rules: impl Iterator<Item = &'a JwtRule>) -> Option<HttpFilter> {
    let mut providers = BTreeMap::new();
    let mut each_valid_or_missing = Vec::new();
    let mut any_provider = Vec::new();
    for (i, rule) in rules.enumerate() {
        let name = format!("origins-{i}");
        providers.insert(name.clone(), provider(rule));
        let by_name = JwtRequirement {
            requires_type: Some(RequiresType::ProviderName(name)),
        };
        each_valid_or_missing.push(JwtRequirement {
            requires_type: Some(RequiresType::RequiresAny(JwtRequirementOrList {
                requirements: vec![
                    by_name.clone(),
                    JwtRequirement {
                        requires_type: Some(RequiresType::AllowMissing(Empty::default())),
                    },
                ],
            })),
        });
        any_provider.push(by_name);
    }
    if providers.is_empty() {
        return None;
    }
    // One provider: its token, or none. Several: each token valid or missing — or any one
    // provider's token, for providers reading the same header (where the AND always fails).
    let requires = if each_valid_or_missing.len() == 1 {
        each_valid_or_missing.remove(0)
    } else {
        any_provider.push(JwtRequirement {
            requires_type: Some(RequiresType::RequiresAll(JwtRequirementAndList {
                requirements: each_valid_or_missing,
            })),
        });
        JwtRequirement {
            requires_type: Some(RequiresType::RequiresAny(JwtRequirementOrList {
                requirements: any_provider,
            })),
        }
    };
    let mut config = JwtAuthentication {
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(RequirementType::Requires(requires)),
        }],
        bypass_cors_preflight: true,
        ..Default::default()
    }
    .encode_to_vec();
    sorted_map::append_map(1, &providers, &mut config);
    Some(HttpFilter {
        name: JWT_FILTER.into(),
        config_type: Some(ConfigType::TypedConfig(Any {
            type_url: JwtAuthentication::type_url(),
            value: config,
        })),
        ..Default::default()
    })
}

fn provider(rule: &JwtRule) -> JwtProvider {
    let timeout = rule
        .timeout
        .as_deref()
        .and_then(capstan_crds::networking::common::parse_duration)
        .unwrap_or(std::time::Duration::from_secs(5));
    let jwks = if rule.jwks_uri.is_empty() || !rule.jwks.is_empty() {
        JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(Specifier::InlineString(rule.jwks.clone())),
            ..Default::default()
        })
    } else {
        JwksSourceSpecifier::RemoteJwks(RemoteJwks {
            http_uri: Some(HttpUri {
                uri: rule.jwks_uri.clone(),
                timeout: Some(super::cluster::proto_duration(timeout)),
                http_upstream_type: Some(HttpUpstreamType::Cluster(jwks_cluster(&rule.jwks_uri))),
            }),
            cache_duration: Some(Duration {
                seconds: 5 * 60,
                nanos: 0,
            }),
            ..Default::default()
        })
    };
    JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        forward: rule.forward_original_token,
        forward_payload_header: rule.output_payload_to_header.clone(),
        payload_in_metadata: JWT_PAYLOAD.into(),
        normalize_payload_in_metadata: Some(NormalizePayload {
            space_delimited_claims: space_delimited_claims(rule),
        }),
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| JwtClaimToHeader {
                header_name: c.header.clone(),
                claim_name: c.claim.clone(),
                ..Default::default()
            })
            .collect(),
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| JwtHeader {
                name: h.name.clone(),
                value_prefix: h.prefix.clone(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        jwks_source_specifier: Some(jwks),
        ..Default::default()
    }
}

/// istiod's space-delimited claims: `permission` and `scope` always, with the rule's own,
/// sorted.
fn space_delimited_claims(rule: &JwtRule) -> Vec<String> {
    let mut claims: std::collections::BTreeSet<String> =
        rule.space_delimited_claims.iter().cloned().collect();
    claims.extend(["permission".to_string(), "scope".to_string()]);
    claims.into_iter().collect()
}

/// The URI's host and port (`https` 443, `http` 80 unless given).
pub fn jwks_host_port(uri: &str) -> Option<(String, u32)> {
    let (scheme, rest) = uri.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            Some((host.to_string(), port.parse().ok()?))
        }
        _ => Some((authority.to_string(), default_port)),
    }
}

/// The mesh's cluster for a JWKS URI, `outbound|<port>||<host>`; named so whether or not a
/// service has that host (as istiod does: Envoy then fails to fetch the keys).
fn jwks_cluster(uri: &str) -> String {
    let (host, port) = jwks_host_port(uri).unwrap_or_default();
    format!("outbound|{port}||{host}")
}

/// Whether the mesh has a service for the JWKS URI's host and port.
pub fn jwks_service_exists(mesh: &Mesh, uri: &str) -> bool {
    jwks_host_port(uri).is_some_and(|(host, port)| {
        mesh.services
            .get(&host)
            .is_some_and(|s| s.ports.iter().any(|p| p.number == port))
    })
}

#[cfg(test)]
mod tests;
