//! DestinationRule `credentialName`: gateway proxies originate TLS with the Secret of their
//! own namespace, served over SDS; sidecars reading the same rule originate none.

use capstan_xds::{ProxyInfo, Role, SnapshotCache, type_index, type_url};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, UpstreamTlsContext};
use prost::Message;

use super::tests::{check, istio, options, pem_pair, secret_in as secret};
use crate::index::{Event, NsName, RecordKey};
use crate::reconcile::Pipeline;

const EXTERNAL: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
";

fn rule(tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api, namespace: istio-system}}
spec:
  host: api.example.com
  trafficPolicy: {{tls: {tls}}}
"
    )
}

const MUTUAL: &str = "{mode: MUTUAL, credentialName: api-client, sni: api.example.com}";
const CLUSTER: &str = "outbound|443||api.example.com";

fn proxy(role: Role, namespace: &str) -> ProxyInfo {
    ProxyInfo {
        role,
        namespace: Some(namespace.into()),
        ..ProxyInfo::default()
    }
}

/// The pipeline after `events`, as a snapshot.
fn served(events: Vec<Event>) -> (Pipeline, SnapshotCache) {
    let mut pipeline = Pipeline::new(options(), "cluster.local");
    for event in events {
        pipeline.index.handle(event);
    }
    let cache = SnapshotCache::new();
    cache.replace(pipeline.full());
    (pipeline, cache)
}

fn view<M: Message + Default>(cache: &SnapshotCache, type_url: &str, proxy: &ProxyInfo) -> Vec<M> {
    let index = type_index(type_url).expect("a served type");
    cache
        .current()
        .snapshot
        .view(index, proxy)
        .map(|r| M::decode(r.body().clone()).expect("decodes"))
        .collect()
}

fn api_cluster(cache: &SnapshotCache, proxy: &ProxyInfo) -> Cluster {
    view::<Cluster>(cache, type_url::CLUSTER, proxy)
        .into_iter()
        .find(|c| c.name == CLUSTER)
        .expect("the api cluster")
}

fn upstream_context(cluster: &Cluster) -> Option<UpstreamTlsContext> {
    let socket = cluster.transport_socket.as_ref()?;
    let Some(ConfigType::TypedConfig(any)) = &socket.config_type else {
        panic!("no typed config");
    };
    Some(UpstreamTlsContext::decode(any.value.as_slice()).expect("decodes"))
}

fn translation_problems(pipeline: &Pipeline) -> Vec<String> {
    (pipeline.translator.problems())
        .map(ToString::to_string)
        .collect()
}

fn secret_names(cache: &SnapshotCache, proxy: &ProxyInfo) -> Vec<String> {
    let mut names: Vec<String> = view::<Secret>(cache, type_url::SECRET, proxy)
        .into_iter()
        .map(|s| s.name)
        .collect();
    names.sort();
    names
}

#[test]
fn gateways_read_the_secret_of_their_namespace_and_sidecars_originate_nothing() {
    let (cert, key) = pem_pair("client");
    let (ca, _) = pem_pair("ca");
    let (_, cache) = served(vec![
        istio(EXTERNAL),
        istio(&rule(MUTUAL)),
        secret(
            "istio-system",
            "api-client",
            &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &ca)],
        ),
    ]);
    let gateway = proxy(Role::Router, "istio-system");
    let context = upstream_context(&api_cluster(&cache, &gateway)).expect("TLS on the gateway");
    assert_eq!(context.sni, "api.example.com");
    let common = context.common_tls_context.expect("common context");
    let names: Vec<&str> = common
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["kubernetes://api-client"]);
    let Some(ValidationContextType::CombinedValidationContext(combined)) =
        common.validation_context_type
    else {
        panic!("no combined validation context");
    };
    let ca_config = combined
        .validation_context_sds_secret_config
        .expect("CA over SDS");
    assert_eq!(ca_config.name, "kubernetes://api-client-cacert");

    // Both secrets, from the Secret's certificate and CA, reach this namespace's gateways.
    let secrets = view::<Secret>(&cache, type_url::SECRET, &gateway);
    let mut kinds: Vec<(String, bool)> = secrets
        .iter()
        .map(|s| {
            let certificate = matches!(s.r#type, Some(SecretType::TlsCertificate(_)));
            (s.name.clone(), certificate)
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("kubernetes://api-client".to_string(), true),
            ("kubernetes://api-client-cacert".to_string(), false)
        ]
    );
    // A gateway elsewhere reads the rule too, but no Secret of that name is there.
    let elsewhere = proxy(Role::Router, "shop");
    assert!(upstream_context(&api_cluster(&cache, &elsewhere)).is_some());
    assert!(secret_names(&cache, &elsewhere).is_empty());
    // A sidecar gets the cluster without TLS, and no Secret (as istiod without a selector).
    let sidecar = proxy(Role::Sidecar, "istio-system");
    assert!(upstream_context(&api_cluster(&cache, &sidecar)).is_none());
    assert!(secret_names(&cache, &sidecar).is_empty());
}

#[test]
fn simple_tls_reads_the_ca_from_the_cacert_secret_and_skips_it_when_told() {
    let (ca, _) = pem_pair("ca");
    let simple = "{mode: SIMPLE, credentialName: api-ca}";
    let (_, cache) = served(vec![
        istio(EXTERNAL),
        istio(&rule(simple)),
        secret("istio-system", "api-ca-cacert", &[("ca.crt", &ca)]),
    ]);
    let gateway = proxy(Role::Router, "istio-system");
    let context = upstream_context(&api_cluster(&cache, &gateway)).expect("TLS");
    let common = context.common_tls_context.expect("common");
    assert!(common.tls_certificate_sds_secret_configs.is_empty());
    assert!(common.validation_context_type.is_some());
    assert_eq!(
        secret_names(&cache, &gateway),
        ["kubernetes://api-ca-cacert"]
    );

    let skip = "{mode: SIMPLE, credentialName: api-ca, insecureSkipVerify: true}";
    let (_, cache) = served(vec![istio(EXTERNAL), istio(&rule(skip))]);
    let context = upstream_context(&api_cluster(&cache, &gateway)).expect("TLS");
    let common = context.common_tls_context.expect("common");
    assert!(common.validation_context_type.is_none());
}

#[test]
fn what_a_credential_lacks_is_reported_on_the_rule() {
    let (cert, key) = pem_pair("client");
    let (pipeline, _) = served(vec![istio(EXTERNAL), istio(&rule(MUTUAL))]);
    let problems = translation_problems(&pipeline);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("spec.trafficPolicy.tls.credentialName")
            && problems[0].contains("no Secret api-client (or api-client-cacert) in any namespace"),
        "{problems:?}"
    );

    // A certificate but no CA: the server cannot be verified.
    let (pipeline, _) = served(vec![
        istio(EXTERNAL),
        istio(&rule(MUTUAL)),
        secret(
            "istio-system",
            "api-client",
            &[("tls.crt", &cert), ("tls.key", &key)],
        ),
    ]);
    let problems = translation_problems(&pipeline);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("no CA to verify the server with")
            && problems[0].contains("namespace istio-system"),
        "{problems:?}"
    );
}

/// Secrets and rules arriving, changing and going equal a full build each step.
#[test]
fn credential_updates_match_a_full_build() {
    let (cert, key) = pem_pair("client");
    let (ca, _) = pem_pair("ca");
    let gone = |ns: &str, name: &str| Event::Delete(RecordKey::Secret(NsName::new(ns, name)));
    check(vec![
        istio(EXTERNAL),
        istio(&rule(MUTUAL)),
        secret(
            "istio-system",
            "api-client",
            &[("tls.crt", &cert), ("tls.key", &key)],
        ),
        secret("istio-system", "api-client-cacert", &[("ca.crt", &ca)]),
        secret(
            "egress",
            "api-client",
            &[("tls.crt", &cert), ("tls.key", &key)],
        ),
        secret(
            "egress",
            "api-client",
            &[("tls.crt", "broken"), ("tls.key", &key)],
        ),
        istio(&rule("{mode: SIMPLE, credentialName: api-client}")),
        gone("istio-system", "api-client-cacert"),
        istio(&rule("{mode: SIMPLE}")),
        istio(&rule(MUTUAL)),
        gone("egress", "api-client"),
        gone("istio-system", "api-client"),
    ]);
}

fn selecting_rule(tls: &str) -> String {
    rule(tls).replace(
        "spec:\n",
        "spec:\n  workloadSelector: {matchLabels: {app: client}}\n",
    )
}

fn labelled(role: Role, namespace: &str, labels: &[(&str, &str)]) -> ProxyInfo {
    ProxyInfo {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..proxy(role, namespace)
    }
}

/// With a `workloadSelector`, the selected sidecars originate TLS with the Secret of the
/// rule's namespace (as istiod lets them); other sidecars, and the rule's namespace's
/// gateways without those labels, do not read this rule at all.
#[test]
fn a_rule_selecting_workloads_gives_them_its_secret() {
    let (cert, key) = pem_pair("client");
    let (ca, _) = pem_pair("ca");
    let (_, cache) = served(vec![
        istio(EXTERNAL),
        istio(&selecting_rule(MUTUAL)),
        secret(
            "istio-system",
            "api-client",
            &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &ca)],
        ),
    ]);
    let selected = labelled(Role::Sidecar, "istio-system", &[("app", "client")]);
    assert!(upstream_context(&api_cluster(&cache, &selected)).is_some());
    assert_eq!(
        secret_names(&cache, &selected),
        ["kubernetes://api-client", "kubernetes://api-client-cacert"]
    );
    for other in [
        labelled(Role::Sidecar, "istio-system", &[("app", "other")]),
        labelled(Role::Sidecar, "shop", &[("app", "client")]),
        proxy(Role::Router, "istio-system"),
    ] {
        assert!(
            upstream_context(&api_cluster(&cache, &other)).is_none(),
            "{other:?}"
        );
        assert!(secret_names(&cache, &other).is_empty(), "{other:?}");
    }
}

/// Rules selecting workloads arriving, changing and going equal a full build each step.
#[test]
fn selecting_rule_updates_match_a_full_build() {
    let (cert, key) = pem_pair("client");
    check(vec![
        istio(EXTERNAL),
        istio(&rule("{mode: SIMPLE}")),
        istio(&selecting_rule(MUTUAL).replace("name: api,", "name: api-for-client,")),
        secret(
            "istio-system",
            "api-client",
            &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &cert)],
        ),
        istio(
            &selecting_rule("{mode: DISABLE}")
                .replace("name: api,", "name: api-for-client,")
                .replace(
                    "trafficPolicy: {tls: {mode: DISABLE}}",
                    "subsets: [{name: v1, labels: {v: '1'}}]",
                ),
        ),
        super::tests::delete(capstan_crds::Kind::DestinationRule, "istio-system", "api"),
        super::tests::delete(
            capstan_crds::Kind::DestinationRule,
            "istio-system",
            "api-for-client",
        ),
    ]);
}
