//! `CUSTOM` AuthorizationPolicies: the request (or connection) is put to an external
//! authorizer, the mesh config's extension provider, when one of the policies' rules matches
//! it — istiod's pair of filters: an RBAC filter whose rules are only *shadow* rules (it
//! enforces nothing, and records the matching rule's name in the request's metadata under
//! `istio_ext_authz_shadow_effective_policy_id`), then an `ext_authz` filter enabled only when
//! that name starts with `istio-ext-authz-<provider>`.
//!
//! As istiod does, when the provider is missing or unusable, or the workload's CUSTOM
//! policies name several providers, the rules deny what they match instead (each rule named
//! `…-deny-due-to-bad-CUSTOM-action`); an HTTP provider adds nothing to TCP chains.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
use envoy_types::pb::envoy::config::core::v3::{ApiVersion, GrpcService, HeaderValue, HttpUri};
use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::rbac::v3::Policy;
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3 as http_authz;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz as NetworkExtAuthz;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::PathSegment;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern as ValuePattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListStringMatcher, MetadataMatcher, StringMatcher, ValueMatcher,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Any, Duration};
use prost::{Message, Name};

use super::{IfUnusable, named_policies, rbac_bytes};
use crate::mesh_config::{ExtAuthzGrpc, ExtAuthzHttp, Provider, RequestBody};
use crate::model::Mesh;
use crate::model::authorization::Policy as AuthzPolicy;

/// The prefix of the rule names the `ext_authz` filter is enabled by.
const MATCH_PREFIX: &str = "istio-ext-authz";
/// The RBAC filter's shadow stat prefix, which also prefixes its metadata keys.
const SHADOW_STAT_PREFIX: &str = "istio_ext_authz_";
const BAD_ACTION_SUFFIX: &str = "-deny-due-to-bad-CUSTOM-action";

/// The filters of one workload's CUSTOM policies, for its HTTP chains and its TCP chains.
#[derive(Debug, Default)]
pub struct CustomFilters {
    pub http: Vec<HttpFilter>,
    pub tcp: Vec<Filter>,
}

/// Why a workload's CUSTOM policies cannot reach their provider (none: they can).
pub fn unusable(mesh: &Mesh, providers: &BTreeSet<&str>) -> Option<String> {
    let mut names = providers.iter();
    let (Some(name), None) = (names.next(), names.next()) else {
        return Some(format!(
            "the workload's CUSTOM policies name several providers ({}); istiod (without \
             PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS) and capstan take one per workload",
            providers.iter().copied().collect::<Vec<_>>().join(", ")
        ));
    };
    resolve(mesh, name).err()
}

/// A usable provider, and the mesh's cluster and host for its service.
struct Resolved<'a> {
    authorizer: Authorizer<'a>,
    cluster: String,
    host: String,
}

#[derive(Clone, Copy)]
enum Authorizer<'a> {
    Http(&'a ExtAuthzHttp),
    Grpc(&'a ExtAuthzGrpc),
}

fn resolve<'a>(mesh: &'a Mesh, name: &str) -> Result<Resolved<'a>, String> {
    let providers = &mesh.settings.extension_providers;
    let authorizer = match providers.get(name) {
        None if name.is_empty() => return Err("it names no provider".into()),
        None => {
            let known: Vec<&str> = providers.names().collect();
            return Err(format!(
                "no extension provider {name:?} in the mesh config (--mesh-config); it has {known:?}"
            ));
        }
        Some(Provider::ExtAuthzHttp(http)) => Authorizer::Http(http),
        Some(Provider::ExtAuthzGrpc(grpc)) => Authorizer::Grpc(grpc),
        Some(Provider::Invalid(reason)) => return Err(format!("provider {name:?}: {reason}")),
        Some(Provider::Unsupported(kind)) => {
            return Err(format!(
                "provider {name:?} is {kind}, not an external authorizer"
            ));
        }
    };
    let (service, port) = match authorizer {
        Authorizer::Http(http) => (&http.service, http.port),
        Authorizer::Grpc(grpc) => (&grpc.service, grpc.port),
    };
    let (namespace, host) = match service.split_once('/') {
        Some((namespace, host)) => (Some(namespace), host),
        None => (None, service.as_str()),
    };
    let found = mesh
        .services
        .get(host)
        .filter(|s| namespace.is_none_or(|ns| s.namespace() == ns));
    if found.is_none() {
        return Err(format!(
            "provider {name:?}: no service {service:?} in the mesh (a Kubernetes Service or a \
             ServiceEntry)"
        ));
    }
    Ok(Resolved {
        authorizer,
        cluster: super::super::cluster_name(port, "", host),
        host: host.to_string(),
    })
}

/// What a workload's chain does with its CUSTOM policies' rules.
#[derive(Debug)]
pub enum CustomCheck {
    /// A request (connection) one of `rules` matches is put to the authorizer `provider`.
    Ask {
        provider: String,
        rules: BTreeMap<String, Policy>,
    },
    /// The provider cannot be used (`reason`): what `rules` match is denied.
    Deny {
        reason: String,
        rules: BTreeMap<String, Policy>,
    },
}

/// The check the CUSTOM `policies` of one workload make on its HTTP (or TCP) chains; none
/// when they make none (no policy, or an HTTP authorizer on a TCP chain).
pub fn check(mesh: &Mesh, policies: &[&AuthzPolicy], for_tcp: bool) -> Option<CustomCheck> {
    let providers: BTreeSet<&str> = policies.iter().map(|p| p.provider()).collect();
    let provider = *providers.first()?;
    if let Some(reason) = unusable(mesh, &providers) {
        let rules = named(mesh, policies, for_tcp, "")
            .into_iter()
            .map(|(name, policy)| (format!("{name}{BAD_ACTION_SUFFIX}"), policy))
            .collect();
        return Some(CustomCheck::Deny { reason, rules });
    }
    let http_only =
        resolve(mesh, provider).is_ok_and(|r| matches!(r.authorizer, Authorizer::Http(_)));
    if for_tcp && http_only {
        return None;
    }
    let prefix = format!("{MATCH_PREFIX}-{provider}");
    Some(CustomCheck::Ask {
        provider: provider.to_string(),
        rules: named(mesh, policies, for_tcp, &prefix),
    })
}

/// The filters for the CUSTOM `policies` applying to one workload.
pub fn filters(mesh: &Mesh, policies: &[&AuthzPolicy]) -> CustomFilters {
    let mut out = CustomFilters::default();
    for for_tcp in [false, true] {
        match check(mesh, policies, for_tcp) {
            None => {}
            Some(CustomCheck::Deny { rules, .. }) => {
                let filter =
                    super::enforcing(RbacAction::Deny, rbac_bytes(RbacAction::Deny, &rules));
                if for_tcp {
                    out.tcp.push(super::network_filter(&filter));
                } else {
                    out.http.push(super::http_filter(&filter));
                }
            }
            Some(CustomCheck::Ask { provider, rules }) => {
                // `check` asks only a provider that resolves.
                if let Ok(resolved) = resolve(mesh, &provider) {
                    let shadow = rbac_bytes(RbacAction::Deny, &rules);
                    let prefix = format!("{MATCH_PREFIX}-{provider}");
                    ask(&resolved, &shadow, &prefix, for_tcp, &mut out);
                }
            }
        }
    }
    out
}

/// The shadow RBAC filter with `shadow` rules, then the `ext_authz` filter it enables.
fn ask(resolved: &Resolved, shadow: &[u8], prefix: &str, for_tcp: bool, out: &mut CustomFilters) {
    let Resolved {
        authorizer,
        cluster,
        host,
    } = resolved;
    match (*authorizer, for_tcp) {
        (Authorizer::Http(http), false) => {
            out.http.push(shadow_http_filter(shadow));
            out.http
                .push(ext_authz_http(http_config(http, cluster, host, prefix)));
        }
        (Authorizer::Grpc(grpc), false) => {
            out.http.push(shadow_http_filter(shadow));
            out.http.push(ext_authz_http(grpc_http_config(
                grpc, cluster, host, prefix,
            )));
        }
        (Authorizer::Grpc(grpc), true) => {
            out.tcp.push(shadow_network_filter(shadow));
            out.tcp.push(ext_authz_network(grpc, cluster, host, prefix));
        }
        // An HTTP authorizer cannot check a connection (`check` asks none).
        (Authorizer::Http(_), true) => {}
    }
}

/// The policies' rules by name (`<prefix>-ns[…]-policy[…]-rule[i]`, or istiod's plain name
/// without a prefix). Fields a TCP chain cannot check leave the rule matching more, as for
/// DENY: more goes to the authorizer.
fn named(
    mesh: &Mesh,
    policies: &[&AuthzPolicy],
    for_tcp: bool,
    prefix: &str,
) -> BTreeMap<String, Policy> {
    let trust = &mesh.settings.trust_domains;
    let plain = named_policies(policies, (for_tcp, IfUnusable::DropField), trust);
    if prefix.is_empty() {
        return plain;
    }
    plain
        .into_iter()
        .map(|(name, policy)| (format!("{prefix}-{name}"), policy))
        .collect()
}

/// `rules` (an encoded RBAC) as shadow rules only: evaluated, recorded, never enforced.
fn shadow_http_filter(rules: &[u8]) -> HttpFilter {
    let mut config = envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac {
        shadow_rules_stat_prefix: SHADOW_STAT_PREFIX.into(),
        ..Default::default()
    }
    .encode_to_vec();
    super::sorted_map::append_message(2, rules, &mut config);
    HttpFilter {
        name: super::HTTP_RBAC.into(),
        config_type: Some(HttpFilterConfig::TypedConfig(Any {
            type_url: envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac::type_url(),
            value: config,
        })),
        ..Default::default()
    }
}

fn shadow_network_filter(rules: &[u8]) -> Filter {
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
    let mut config = NetworkRbac {
        stat_prefix: "tcp.".into(),
        shadow_rules_stat_prefix: SHADOW_STAT_PREFIX.into(),
        ..Default::default()
    }
    .encode_to_vec();
    super::sorted_map::append_message(2, rules, &mut config);
    Filter {
        name: super::NETWORK_RBAC.into(),
        config_type: Some(FilterConfig::TypedConfig(Any {
            type_url: NetworkRbac::type_url(),
            value: config,
        })),
    }
}

/// Enabled when the RBAC filter `filter` recorded a rule whose name starts with `prefix`.
fn enabled_by(filter: &str, prefix: &str) -> MetadataMatcher {
    MetadataMatcher {
        filter: filter.into(),
        path: vec![PathSegment {
            segment: Some(Segment::Key(format!(
                "{SHADOW_STAT_PREFIX}shadow_effective_policy_id"
            ))),
        }],
        value: Some(ValueMatcher {
            match_pattern: Some(ValuePattern::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Prefix(prefix.into())),
                ignore_case: false,
            })),
        }),
        ..Default::default()
    }
}

fn http_config(
    http: &ExtAuthzHttp,
    cluster: &str,
    host: &str,
    prefix: &str,
) -> http_authz::ExtAuthz {
    let headers_to_add: Vec<HeaderValue> = http
        .include_additional_headers_in_check
        .iter()
        .map(|(key, value)| HeaderValue {
            key: key.clone(),
            value: value.clone(),
            ..Default::default()
        })
        .collect();
    let authorization_request =
        (!headers_to_add.is_empty()).then(|| http_authz::AuthorizationRequest {
            headers_to_add,
            ..Default::default()
        });
    let authorization_response = (!http.headers_to_upstream_on_allow.is_empty()
        || !http.headers_to_downstream_on_deny.is_empty()
        || !http.headers_to_downstream_on_allow.is_empty())
    .then(|| http_authz::AuthorizationResponse {
        allowed_upstream_headers: header_list(&http.headers_to_upstream_on_allow),
        allowed_client_headers: header_list(&http.headers_to_downstream_on_deny),
        allowed_client_headers_on_success: header_list(&http.headers_to_downstream_on_allow),
        ..Default::default()
    });
    let service = http_authz::HttpService {
        path_prefix: http.path_prefix.clone(),
        server_uri: Some(HttpUri {
            // Required by Envoy, unused: the cluster is what it calls.
            uri: format!("http://{host}"),
            timeout: Some(duration(http.timeout())),
            http_upstream_type: Some(HttpUpstreamType::Cluster(cluster.into())),
        }),
        authorization_request,
        authorization_response,
        ..Default::default()
    };
    http_authz::ExtAuthz {
        status_on_error: status(&http.status_on_error),
        failure_mode_allow: http.fail_open,
        clear_route_cache: http.clear_route_cache,
        transport_api_version: ApiVersion::V3 as i32,
        services: Some(http_authz::ext_authz::Services::HttpService(service)),
        filter_enabled_metadata: Some(enabled_by(super::HTTP_RBAC, prefix)),
        with_request_body: http.include_request_body_in_check.as_ref().map(buffer),
        allowed_headers: header_list(http.request_headers()),
        ..Default::default()
    }
}

fn grpc_service(grpc: &ExtAuthzGrpc, cluster: &str, host: &str) -> GrpcService {
    GrpcService {
        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
            cluster_name: cluster.into(),
            authority: host.into(),
            ..Default::default()
        })),
        timeout: Some(duration(grpc.timeout())),
        ..Default::default()
    }
}

fn grpc_http_config(
    grpc: &ExtAuthzGrpc,
    cluster: &str,
    host: &str,
    prefix: &str,
) -> http_authz::ExtAuthz {
    http_authz::ExtAuthz {
        status_on_error: status(&grpc.status_on_error),
        failure_mode_allow: grpc.fail_open,
        clear_route_cache: grpc.clear_route_cache,
        transport_api_version: ApiVersion::V3 as i32,
        services: Some(http_authz::ext_authz::Services::GrpcService(grpc_service(
            grpc, cluster, host,
        ))),
        filter_enabled_metadata: Some(enabled_by(super::HTTP_RBAC, prefix)),
        with_request_body: grpc.include_request_body_in_check.as_ref().map(buffer),
        ..Default::default()
    }
}

fn ext_authz_http(config: http_authz::ExtAuthz) -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.ext_authz".into(),
        config_type: Some(HttpFilterConfig::TypedConfig(Any {
            type_url: http_authz::ExtAuthz::type_url(),
            value: config.encode_to_vec(),
        })),
        ..Default::default()
    }
}

fn ext_authz_network(grpc: &ExtAuthzGrpc, cluster: &str, host: &str, prefix: &str) -> Filter {
    let config = NetworkExtAuthz {
        stat_prefix: "tcp.".into(),
        failure_mode_allow: grpc.fail_open,
        transport_api_version: ApiVersion::V3 as i32,
        grpc_service: Some(grpc_service(grpc, cluster, host)),
        filter_enabled_metadata: Some(enabled_by(super::NETWORK_RBAC, prefix)),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.ext_authz".into(),
        config_type: Some(FilterConfig::TypedConfig(Any {
            type_url: NetworkExtAuthz::type_url(),
            value: config.encode_to_vec(),
        })),
    }
}

/// Header names as Istio reads them: `x-*` a prefix, `*-id` a suffix, else exact; any case.
fn header_list(headers: &[String]) -> Option<ListStringMatcher> {
    if headers.is_empty() {
        return None;
    }
    let patterns = headers
        .iter()
        .map(|header| {
            let pattern = if let Some(suffix) = header.strip_prefix('*') {
                MatchPattern::Suffix(suffix.into())
            } else if let Some(prefix) = header.strip_suffix('*') {
                MatchPattern::Prefix(prefix.into())
            } else {
                MatchPattern::Exact(header.clone())
            };
            StringMatcher {
                match_pattern: Some(pattern),
                ignore_case: true,
            }
        })
        .collect();
    Some(ListStringMatcher { patterns })
}

fn status(code: &str) -> Option<HttpStatus> {
    crate::mesh_config::status_on_error(code).map(|code| HttpStatus { code: code as i32 })
}

fn buffer(body: &RequestBody) -> http_authz::BufferSettings {
    http_authz::BufferSettings {
        max_request_bytes: body.max_request_bytes,
        allow_partial_message: body.allow_partial_message,
        pack_as_bytes: body.pack_as_bytes,
    }
}

fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests;
