//! AuthorizationPolicy on a workload's `virtualInbound`: RBAC filters on its HTTP and TCP
//! chains where a policy selects it, and incremental builds equal to full ones.

use capstan_crds::Kind;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use prost::Message;

use super::peer_authentication_tests::{entries, virtual_inbound};
use super::tests::{capture, check_with, delete, istio};
use crate::translate::Options;

fn policy(namespace: &str, name: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {namespace}}}
spec:
{body}"
    )
}

/// Per chain of `port`: its network filters, and for an HTTP chain its HTTP filters.
fn filters_on(listener: &Listener, port: u32) -> Vec<(Vec<String>, Vec<String>)> {
    listener
        .filter_chains
        .iter()
        .filter(|c| {
            c.filter_chain_match
                .as_ref()
                .and_then(|m| m.destination_port)
                .is_some_and(|p| p.value == port)
        })
        .map(filters_of)
        .collect()
}

/// A chain's network filters, and for an HTTP chain its HTTP filters.
fn filters_of(chain: &FilterChain) -> (Vec<String>, Vec<String>) {
    let network: Vec<String> = chain.filters.iter().map(|f| f.name.clone()).collect();
    let http = chain
        .filters
        .iter()
        .filter_map(|f| match &f.config_type {
            Some(ConfigType::TypedConfig(any))
                if f.name == "envoy.filters.network.http_connection_manager" =>
            {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .flat_map(|m| m.http_filters.into_iter().map(|f| f.name))
        .collect();
    (network, http)
}

const DENY_DELETE: &str = "  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
";

#[test]
fn rbac_filters_go_before_the_router_and_the_tcp_proxy_of_selected_workloads() {
    let mut yamls = entries(super::peer_authentication_tests::IN_MESH, false);
    let plain = virtual_inbound(&yamls);
    let (network, http) = &filters_on(&plain, 9080)[0];
    assert_eq!(network, &["envoy.filters.network.http_connection_manager"]);
    assert!(!http.iter().any(|f| f.contains("rbac")), "{http:?}");

    yamls.push(policy("istio-system", "deny-delete", DENY_DELETE));
    yamls.push(policy(
        "bookinfo",
        "allow-bookinfo",
        "  selector: {matchLabels: {app: bookinfo}}\n  rules: [{}]\n",
    ));
    let guarded = virtual_inbound(&yamls);
    for (_, http) in filters_on(&guarded, 9080) {
        assert_eq!(
            http[..2],
            ["envoy.filters.http.rbac", "envoy.filters.http.rbac"],
            "DENY, then ALLOW, before the rest: {http:?}"
        );
    }
    for (network, _) in filters_on(&guarded, 5432) {
        assert_eq!(
            network,
            [
                "envoy.filters.network.rbac",
                "envoy.filters.network.rbac",
                "envoy.filters.network.tcp_proxy"
            ]
        );
    }

    // A selector the workload does not match: nothing.
    let other = [
        entries(super::peer_authentication_tests::IN_MESH, false),
        vec![policy(
            "bookinfo",
            "ratings",
            "  selector: {matchLabels: {app: ratings}}\n  rules: [{}]\n",
        )],
    ]
    .concat();
    let (network, _) = &filters_on(&virtual_inbound(&other), 5432)[0];
    assert_eq!(network, &["envoy.filters.network.tcp_proxy"]);
}

/// The passthrough (connections to a port no service declares) is behind the workload's
/// policies too, as istiod's passthrough chains: HTTP by detection through the RBAC filters,
/// anything else through the network ones.
#[test]
fn the_passthrough_is_behind_the_workloads_policies() {
    let mut yamls = entries("", false);
    yamls.push(policy("istio-system", "deny-delete", DENY_DELETE));
    let guarded = virtual_inbound(&yamls);
    let passing: Vec<_> = guarded
        .filter_chains
        .iter()
        .filter(|c| c.name.starts_with("InboundPassthroughCluster"))
        .collect();
    let names: Vec<&str> = passing.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["InboundPassthroughClusterhttp", "InboundPassthroughCluster"]
    );
    let http = filters_of(passing[0]);
    assert_eq!(
        http.0,
        ["envoy.filters.network.http_connection_manager"],
        "{http:?}"
    );
    assert_eq!(http.1[0], "envoy.filters.http.rbac");
    assert_eq!(
        filters_of(passing[1]).0,
        [
            "envoy.filters.network.rbac",
            "envoy.filters.network.tcp_proxy"
        ]
    );
    let inspectors: Vec<&str> = guarded
        .listener_filters
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert!(
        inspectors.contains(&"envoy.filters.listener.http_inspector"),
        "{inspectors:?}"
    );
}

/// Policies added, edited and deleted, mesh-wide and per namespace, must each equal a full
/// build.
#[test]
fn authorization_policy_updates_match_a_full_build() {
    let in_mesh = entries(super::peer_authentication_tests::IN_MESH, false);
    check_with(
        capture(),
        vec![
            istio(&in_mesh[0]),
            istio(&in_mesh[1]),
            istio(&policy("bookinfo", "deny-all", "  {}\n")),
            istio(&policy("istio-system", "deny-delete", DENY_DELETE)),
            // A selector that stops covering the workload: the old scope is rebuilt too.
            istio(&policy(
                "bookinfo",
                "selecting",
                "  selector: {matchLabels: {app: bookinfo}}\n  rules: [{}]\n",
            )),
            istio(&policy(
                "bookinfo",
                "selecting",
                "  selector: {matchLabels: {app: ratings}}\n  rules: [{}]\n",
            )),
            istio(&policy(
                "bookinfo",
                "deny-all",
                "  rules: [{from: [{source: {principals: [cluster.local/ns/bookinfo/sa/x]}}]}]\n",
            )),
            // Put in dry run and back: only the annotation changes.
            istio(&dry_run(&policy(
                "istio-system",
                "deny-delete",
                DENY_DELETE,
            ))),
            istio(&policy("istio-system", "deny-delete", DENY_DELETE)),
            istio(&dry_run(&policy(
                "istio-system",
                "deny-delete",
                DENY_DELETE,
            ))),
            delete(Kind::AuthorizationPolicy, "istio-system", "deny-delete"),
            delete(Kind::AuthorizationPolicy, "bookinfo", "deny-all"),
        ],
    );
}

/// `policy` (YAML) annotated as a dry run.
fn dry_run(policy: &str) -> String {
    policy.replace(
        "namespace: istio-system}",
        "namespace: istio-system, annotations: {istio.io/dry-run: \"true\"}}",
    )
}

/// A CUSTOM policy whose authorizer's service comes later (denying until then, reported),
/// goes, and the policy deleted: each must equal a full build.
#[test]
fn custom_policy_updates_match_a_full_build() {
    let in_mesh = entries(super::peer_authentication_tests::IN_MESH, false);
    let config = crate::mesh_config::MeshConfig::parse(
        "mesh",
        "extensionProviders:\n- name: authz\n  envoyExtAuthzGrpc: {service: authz.bookinfo.svc.cluster.local, port: 9000}\n",
    )
    .expect("valid");
    let options = Options {
        mesh_settings: std::sync::Arc::new(config.settings()),
        ..capture()
    };
    let authz = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: authz, namespace: bookinfo}
spec:
  hosts: [authz.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9000, name: grpc, protocol: GRPC}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.9}]
";
    check_with(
        options,
        vec![
            istio(&in_mesh[0]),
            istio(&in_mesh[1]),
            istio(&policy(
                "bookinfo",
                "ext",
                "  action: CUSTOM\n  provider: {name: authz}\n  rules: [{}]\n",
            )),
            istio(authz),
            delete(Kind::ServiceEntry, "bookinfo", "authz"),
            istio(authz),
            delete(Kind::AuthorizationPolicy, "bookinfo", "ext"),
        ],
    );
}

/// RequestAuthentications added, edited (a `jwksUri` no service has, reported) and deleted
/// must each equal a full build.
#[test]
fn request_authentication_updates_match_a_full_build() {
    let in_mesh = entries(super::peer_authentication_tests::IN_MESH, false);
    let request_authentication = |name: &str, rules: &str| {
        format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: {name}, namespace: bookinfo}}
spec:
  jwtRules: {rules}
"
        )
    };
    check_with(
        capture(),
        vec![
            istio(&in_mesh[0]),
            istio(&request_authentication(
                "jwt",
                "[{issuer: issuer-a, jwks: '{\"keys\": []}'}]",
            )),
            istio(&in_mesh[1]),
            istio(&request_authentication(
                "jwt",
                "[{issuer: issuer-b, jwksUri: 'https://keys.example.com/jwks'}]",
            )),
            delete(Kind::RequestAuthentication, "bookinfo", "jwt"),
        ],
    );
}

/// Policies selecting gateway proxies go on the gateway's listeners: added, edited and
/// deleted, each must equal a full build.
#[test]
fn gateway_policy_updates_match_a_full_build() {
    use super::tests::{INGRESS, check, shop_vs};
    let on_gateway = |name: &str, body: &str| {
        policy(
            "istio-system",
            name,
            &format!("  selector: {{matchLabels: {{istio: ingressgateway}}}}\n{body}"),
        )
    };
    check(vec![
        istio(&in_mesh_reviews()),
        istio(&shop_vs("[istio-system/ingress]", "v1")),
        istio(INGRESS),
        istio(&on_gateway("deny-admin", DENY_DELETE)),
        istio(&on_gateway(
            "deny-admin",
            "  action: DENY\n  rules: [{to: [{operation: {paths: [/admin*]}}]}]\n",
        )),
        delete(Kind::AuthorizationPolicy, "istio-system", "deny-admin"),
        // A policy in the namespace the gateway pods may run in: a variant there.
        istio(&policy("istio-ingress", "deny-all", "  {}\n")),
        istio(&policy(
            "istio-ingress",
            "deny-all",
            "  selector: {matchLabels: {istio: egressgateway}}\n",
        )),
        delete(Kind::AuthorizationPolicy, "istio-ingress", "deny-all"),
    ]);
}

fn in_mesh_reviews() -> String {
    entries(super::peer_authentication_tests::IN_MESH, false)[0].clone()
}

/// A gateway proxy labelled as the policy selects gets its RBAC filter before the router on
/// the Gateway's listener; a policy selecting other labels puts none there.
#[test]
fn a_gateway_listener_carries_the_policies_selecting_its_proxies() {
    use super::tests::{INGRESS, served_to, shop_vs};
    let gateway = capstan_xds::ProxyInfo {
        id: "router~10.0.9.1~gw-0.istio-system~istio-system.svc.cluster.local".into(),
        role: capstan_xds::Role::Router,
        namespace: Some("istio-system".into()),
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        ..Default::default()
    };
    let http_filters = |selector: &str| {
        let yamls = vec![
            in_mesh_reviews(),
            shop_vs("[istio-system/ingress]", "v1"),
            INGRESS.to_string(),
            policy(
                "istio-system",
                "deny-admin",
                &format!("  selector: {{matchLabels: {{{selector}}}}}\n{DENY_DELETE}"),
            ),
        ];
        let listeners: Vec<Listener> = served_to(
            super::tests::options(),
            &yamls,
            capstan_xds::type_url::LISTENER,
            &gateway,
        );
        listeners
            .iter()
            .flat_map(filters_on_any)
            .collect::<Vec<String>>()
    };
    let selected = http_filters("istio: ingressgateway");
    assert_eq!(
        selected.first().map(String::as_str),
        Some("envoy.filters.http.rbac"),
        "{selected:?}"
    );
    let other = http_filters("istio: egressgateway");
    assert!(!other.iter().any(|f| f.contains("rbac")), "{other:?}");
}

/// A gateway proxy running in `istio-ingress` gets that namespace's policies (and the root
/// namespace's); one in the root namespace, or in a namespace without policies, does not.
#[test]
fn a_gateway_proxy_gets_the_policies_of_its_own_namespace() {
    use super::tests::{INGRESS, served_to, shop_vs};
    let gateway_in = |namespace: &str| capstan_xds::ProxyInfo {
        id: format!("router~10.0.9.1~gw-0.{namespace}~{namespace}.svc.cluster.local"),
        role: capstan_xds::Role::Router,
        namespace: Some(namespace.into()),
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        ..Default::default()
    };
    let yamls = vec![
        in_mesh_reviews(),
        shop_vs("[istio-system/ingress]", "v1"),
        INGRESS.to_string(),
        policy("istio-ingress", "deny-all", "  {}\n"),
    ];
    let http_filters = |namespace: &str| {
        let listeners: Vec<Listener> = served_to(
            super::tests::options(),
            &yamls,
            capstan_xds::type_url::LISTENER,
            &gateway_in(namespace),
        );
        assert!(!listeners.is_empty(), "{namespace}: no listener");
        listeners
            .iter()
            .flat_map(filters_on_any)
            .collect::<Vec<String>>()
    };
    let there = http_filters("istio-ingress");
    assert_eq!(
        there.first().map(String::as_str),
        Some("envoy.filters.http.rbac"),
        "{there:?}"
    );
    for elsewhere in ["istio-system", "other"] {
        let filters = http_filters(elsewhere);
        assert!(
            !filters.iter().any(|f| f.contains("rbac")),
            "{elsewhere}: {filters:?}"
        );
    }
}

/// The HTTP filters of every connection manager of `listener`.
fn filters_on_any(listener: &Listener) -> Vec<String> {
    listener
        .filter_chains
        .iter()
        .flat_map(|c| c.filters.iter())
        .filter_map(|f| match &f.config_type {
            Some(ConfigType::TypedConfig(any)) if f.name.ends_with("http_connection_manager") => {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .flat_map(|m| m.http_filters.into_iter().map(|f| f.name))
        .collect()
}
