use std::sync::Arc;

use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;

use super::*;
use crate::mesh_config::MeshConfig;
use crate::translate::authorization::InboundAuthz;
use crate::translate::test_support;

const AUTHZ_SERVICE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: authz, namespace: foo}
spec:
  hosts: [authz.foo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8000, name: http, protocol: HTTP}, {number: 9000, name: grpc, protocol: GRPC}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
";

const PROVIDERS: &str = "extensionProviders:
- name: http-authz
  envoyExtAuthzHttp:
    service: foo/authz.foo.svc.cluster.local
    port: 8000
    timeout: 2s
    pathPrefix: /check
    includeRequestHeadersInCheck: [x-ext-authz, x-user*]
    headersToDownstreamOnDeny: [x-reason]
- name: grpc-authz
  envoyExtAuthzGrpc: {service: authz.foo.svc.cluster.local, port: 9000, failOpen: true}
- name: elsewhere
  envoyExtAuthzGrpc: {service: bar/authz.foo.svc.cluster.local, port: 9000}
";

fn custom(name: &str, provider: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: foo}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  action: CUSTOM
  provider: {{name: {provider}}}
  rules: [{{to: [{{operation: {{paths: [/headers]}}}}]}}]
---
"
    )
}

const ALLOW_ALL: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec: {rules: [{}]}
---
";

fn mesh(objects: &str) -> crate::model::Mesh {
    let mut mesh = test_support::mesh(&format!("{AUTHZ_SERVICE}{objects}"));
    let config = MeshConfig::parse("mesh", PROVIDERS).expect("valid");
    mesh.settings = Arc::new(config.settings());
    mesh
}

fn httpbin(mesh: &crate::model::Mesh) -> InboundAuthz {
    let labels = [("app".to_string(), "httpbin".to_string())].into();
    InboundAuthz::for_workload(mesh, "foo", &labels)
}

fn typed<M: Message + Default>(config: &Option<HttpFilterConfig>) -> M {
    let Some(HttpFilterConfig::TypedConfig(any)) = config else {
        panic!("a typed config");
    };
    M::decode(any.value.as_slice()).expect("decodes")
}

fn typed_network<M: Message + Default>(filter: &Filter) -> M {
    let Some(FilterConfig::TypedConfig(any)) = &filter.config_type else {
        panic!("a typed config");
    };
    M::decode(any.value.as_slice()).expect("decodes")
}

fn names(http: &[HttpFilter]) -> Vec<&str> {
    http.iter().map(|f| f.name.as_str()).collect()
}

#[test]
fn an_http_authorizer_is_asked_only_when_a_custom_rule_matches_and_before_deny_and_allow() {
    let authz = httpbin(&mesh(&format!(
        "{}{ALLOW_ALL}",
        custom("ext", "http-authz")
    )));
    assert_eq!(
        names(&authz.http),
        [
            HTTP_RBAC_NAME,
            "envoy.filters.http.ext_authz",
            HTTP_RBAC_NAME
        ]
    );
    let shadow: HttpRbac = typed(&authz.http[0].config_type);
    assert!(shadow.rules.is_none(), "the CUSTOM filter enforces nothing");
    assert_eq!(shadow.shadow_rules_stat_prefix, "istio_ext_authz_");
    let rules = shadow.shadow_rules.expect("shadow rules");
    assert_eq!(rules.action, RbacAction::Deny as i32);
    assert_eq!(
        rules.policies.keys().collect::<Vec<_>>(),
        ["istio-ext-authz-http-authz-ns[foo]-policy[ext]-rule[0]"]
    );
    let ext: http_authz::ExtAuthz = typed(&authz.http[1].config_type);
    let Some(http_authz::ext_authz::Services::HttpService(service)) = &ext.services else {
        panic!("an HTTP service");
    };
    assert_eq!(service.path_prefix, "/check");
    let uri = service.server_uri.as_ref().expect("a server uri");
    assert_eq!(
        uri.http_upstream_type,
        Some(HttpUpstreamType::Cluster(
            "outbound|8000||authz.foo.svc.cluster.local".into()
        ))
    );
    assert_eq!(uri.timeout.as_ref().map(|t| t.seconds), Some(2));
    let enabled = ext.filter_enabled_metadata.expect("enabled by metadata");
    assert_eq!(enabled.filter, HTTP_RBAC_NAME);
    assert_eq!(
        enabled.path[0].segment,
        Some(Segment::Key(
            "istio_ext_authz_shadow_effective_policy_id".into()
        ))
    );
    let prefix = enabled.value.and_then(|v| v.match_pattern);
    assert_eq!(
        prefix,
        Some(ValuePattern::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::Prefix("istio-ext-authz-http-authz".into())),
            ignore_case: false,
        }))
    );
    let allowed: Vec<_> = ext
        .allowed_headers
        .expect("allowed headers")
        .patterns
        .into_iter()
        .map(|p| p.match_pattern)
        .collect();
    assert_eq!(
        allowed,
        [
            Some(MatchPattern::Exact("x-ext-authz".into())),
            Some(MatchPattern::Prefix("x-user".into()))
        ]
    );
    let response = service.authorization_response.as_ref().expect("a response");
    assert!(response.allowed_client_headers.is_some());
    assert!(!ext.failure_mode_allow);
    // An HTTP authorizer cannot check a connection: TCP chains keep only the ALLOW filter.
    assert_eq!(authz.tcp.len(), 1);
}

#[test]
fn a_grpc_authorizer_also_checks_tcp_connections() {
    let authz = httpbin(&mesh(&custom("ext", "grpc-authz")));
    assert_eq!(
        names(&authz.http),
        [HTTP_RBAC_NAME, "envoy.filters.http.ext_authz"]
    );
    let ext: http_authz::ExtAuthz = typed(&authz.http[1].config_type);
    assert!(ext.failure_mode_allow);
    let Some(http_authz::ext_authz::Services::GrpcService(grpc)) = &ext.services else {
        panic!("a gRPC service");
    };
    let Some(TargetSpecifier::EnvoyGrpc(envoy)) = &grpc.target_specifier else {
        panic!("Envoy's gRPC client");
    };
    assert_eq!(
        envoy.cluster_name,
        "outbound|9000||authz.foo.svc.cluster.local"
    );
    assert_eq!(envoy.authority, "authz.foo.svc.cluster.local");
    assert_eq!(grpc.timeout.as_ref().map(|t| t.seconds), Some(600));
    let tcp: Vec<&str> = authz.tcp.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        tcp,
        [
            "envoy.filters.network.rbac",
            "envoy.filters.network.ext_authz"
        ]
    );
    let shadow: NetworkRbac = typed_network(&authz.tcp[0]);
    assert!(shadow.rules.is_none());
    // The path is HTTP-only: on TCP, the rule asks about every connection, as a DENY would.
    let rules = shadow.shadow_rules.expect("shadow rules");
    assert_eq!(rules.policies.len(), 1);
    let network: NetworkExtAuthz = typed_network(&authz.tcp[1]);
    assert_eq!(
        network
            .filter_enabled_metadata
            .expect("enabled by metadata")
            .filter,
        "envoy.filters.network.rbac"
    );
}

#[test]
fn a_provider_that_cannot_be_used_denies_what_its_rules_match() {
    for (provider, reason) in [
        (
            "missing",
            "no extension provider \"missing\" in the mesh config",
        ),
        (
            "elsewhere",
            "no service \"bar/authz.foo.svc.cluster.local\" in the mesh",
        ),
    ] {
        let mesh = mesh(&custom("ext", provider));
        let why = unusable(&mesh, &BTreeSet::from([provider])).expect("unusable");
        assert!(why.contains(reason), "{why}");
        let authz = httpbin(&mesh);
        assert_eq!(names(&authz.http), [HTTP_RBAC_NAME]);
        let deny: HttpRbac = typed(&authz.http[0].config_type);
        let rules = deny.rules.expect("enforced rules");
        assert_eq!(rules.action, RbacAction::Deny as i32);
        assert_eq!(
            rules.policies.keys().collect::<Vec<_>>(),
            ["ns[foo]-policy[ext]-rule[0]-deny-due-to-bad-CUSTOM-action"]
        );
        assert_eq!(authz.tcp.len(), 1, "TCP chains deny too");
    }
}

#[test]
fn several_providers_for_one_workload_deny_as_istiod_does() {
    let mesh = mesh(&format!(
        "{}{}",
        custom("a", "http-authz"),
        custom("b", "grpc-authz")
    ));
    let why = unusable(&mesh, &BTreeSet::from(["http-authz", "grpc-authz"])).expect("unusable");
    assert!(
        why.contains("several providers (grpc-authz, http-authz)"),
        "{why}"
    );
    let authz = httpbin(&mesh);
    assert_eq!(names(&authz.http), [HTTP_RBAC_NAME]);
    let deny: HttpRbac = typed(&authz.http[0].config_type);
    assert_eq!(deny.rules.expect("rules").policies.len(), 2);
}

#[test]
fn a_workload_no_custom_policy_selects_gets_no_authorizer() {
    let mesh = mesh(&custom("ext", "http-authz"));
    let labels = [("app".to_string(), "other".to_string())].into();
    let authz = InboundAuthz::for_workload(&mesh, "foo", &labels);
    assert!(authz.http.is_empty() && authz.tcp.is_empty());
}

const HTTP_RBAC_NAME: &str = "envoy.filters.http.rbac";
