use super::*;

fn parse(text: &str) -> MeshConfig {
    MeshConfig::parse("mesh", text).expect("a valid mesh config")
}

#[test]
fn reads_what_capstan_applies_and_lists_the_rest() {
    let config = parse(
        "rootNamespace: mesh-root\n\
         trustDomain: example.org\n\
         accessLogFile: /dev/stdout\n\
         defaultConfig:\n  holdApplicationUntilProxyStarts: true\n\
         outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n\
         enableAutoMtls: false\n\
         extensionProviders:\n\
         - name: zipkin\n  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}\n",
    );
    assert_eq!(config.root_namespace.as_deref(), Some("mesh-root"));
    assert_eq!(config.trust_domain.as_deref(), Some("example.org"));
    assert_eq!(config.settings().trust_domains.all(), ["example.org"]);
    assert!(!config.settings().enable_auto_mtls);
    assert!(MeshSettings::default().enable_auto_mtls, "Istio's default");
    assert_eq!(
        config.outbound_traffic_policy.as_deref(),
        Some("REGISTRY_ONLY")
    );
    assert_eq!(
        config.not_applied,
        [
            "accessLogFile",
            "defaultConfig",
            "extensionProviders[0].zipkin"
        ]
    );
    assert_eq!(
        config.extension_providers.get("zipkin"),
        Some(&Provider::Unsupported("zipkin".into()))
    );
}

#[test]
fn reads_trust_domain_aliases() {
    let config = parse("trustDomainAliases: [old.example, cluster.local]\n");
    assert_eq!(config.not_applied, Vec::<String>::new());
    assert_eq!(
        config.settings().trust_domains.all(),
        ["cluster.local", "old.example"]
    );
    assert_eq!(
        MeshSettings::default().trust_domains.all(),
        ["cluster.local"]
    );
}

#[test]
fn reads_external_authorizers() {
    let config = parse(
        "extensionProviders:\n\
         - name: http-authz\n  envoyExtAuthzHttp:\n    service: authz.foo.svc.cluster.local\n    \
             port: 8000\n    timeout: 0.5s\n    pathPrefix: /check\n    failOpen: true\n    \
             statusOnError: \"503\"\n    includeRequestHeadersInCheck: [x-ext-authz]\n    \
             includeAdditionalHeadersInCheck: {x-from: capstan}\n    \
             headersToUpstreamOnAllow: [x-user*]\n\
         - name: grpc-authz\n  envoyExtAuthzGrpc: {service: foo/authz.example.com, port: 9000}\n",
    );
    let Some(Provider::ExtAuthzHttp(http)) = config.extension_providers.get("http-authz") else {
        panic!("{config:?}");
    };
    assert_eq!(http.service, "authz.foo.svc.cluster.local");
    assert_eq!(http.port, 8000);
    assert_eq!(http.timeout(), Duration::from_millis(500));
    assert_eq!(http.path_prefix, "/check");
    assert!(http.fail_open);
    assert_eq!(
        providers::status_on_error(&http.status_on_error),
        Some(envoy_types::pb::envoy::r#type::v3::StatusCode::ServiceUnavailable)
    );
    assert_eq!(http.request_headers(), ["x-ext-authz"]);
    assert_eq!(
        http.include_additional_headers_in_check["x-from"],
        "capstan"
    );
    let Some(Provider::ExtAuthzGrpc(grpc)) = config.extension_providers.get("grpc-authz") else {
        panic!("{config:?}");
    };
    assert_eq!(grpc.service, "foo/authz.example.com");
    assert_eq!(grpc.timeout(), Duration::from_secs(600));
    assert!(config.not_applied.is_empty());
}

use std::time::Duration;

#[test]
fn a_provider_with_a_bad_field_is_kept_with_the_reason() {
    let config = parse(
        "extensionProviders:\n\
         - name: a\n  envoyExtAuthzHttp: {service: authz, port: 0, pathPrefix: check}\n\
         - name: b\n  envoyExtAuthzGrpc: {service: authz, port: 9000, statusOnError: \"299\"}\n\
         - name: c\n  envoyExtAuthzHttp: {service: authz, port: 80, includeRequestHeadersInCheck: [\"*\"]}\n\
         - name: d\n  envoyExtAuthzGrpc: {service: authz, port: 9000, timeout: 10m}\n\
         - name: e\n  envoyExtAuthzGrpc: {service: authz, port: 9000, failClosed: true}\n",
    );
    let reason = |name: &str| match config.extension_providers.get(name) {
        Some(Provider::Invalid(reason)) => reason.clone(),
        other => panic!("{name}: {other:?}"),
    };
    assert!(
        reason("a").contains("port must be in [1, 65535], found 0"),
        "{}",
        reason("a")
    );
    assert!(
        reason("a").contains("pathPrefix must begin with `/`"),
        "{}",
        reason("a")
    );
    assert!(
        reason("b").contains("statusOnError \"299\""),
        "{}",
        reason("b")
    );
    assert!(reason("c").contains("includeRequestHeadersInCheck: a single wildcard"));
    assert!(reason("d").contains("timeout \"10m\""), "{}", reason("d"));
    assert!(reason("e").contains("failClosed"), "{}", reason("e"));
}

#[test]
fn refuses_what_it_cannot_read_naming_the_field() {
    let error = |text: &str| {
        MeshConfig::parse("mesh.yaml", text)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        error("outboundTrafficPolicy: {mode: DENY}\n"),
        "the mesh config mesh.yaml: outboundTrafficPolicy.mode: \"DENY\" is not ALLOW_ANY or REGISTRY_ONLY"
    );
    assert_eq!(
        error("extensionProviders:\n- envoyExtAuthzHttp: {service: a, port: 1}\n"),
        "the mesh config mesh.yaml: extensionProviders[0]: name: missing (a non-empty string)"
    );
    assert_eq!(
        error("extensionProviders:\n- {name: a}\n"),
        "the mesh config mesh.yaml: extensionProviders[0]: a: names no provider kind"
    );
    assert!(
        error("extensionProviders:\n- {name: a, zipkin: {}}\n- {name: a, zipkin: {}}\n")
            .contains("extensionProviders[1].name: \"a\" is the name of an earlier provider")
    );
    assert!(error("rootNamespace: [a]\n").starts_with("the mesh config mesh.yaml is not valid"));
}

#[test]
fn an_empty_file_is_the_default() {
    assert_eq!(parse(""), MeshConfig::default());
    assert_eq!(parse("# nothing\n"), MeshConfig::default());
}

#[test]
fn a_file_too_large_is_refused_unread() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("mesh");
    std::fs::write(&path, vec![b'#'; (MAX_FILE_BYTES + 1) as usize]).expect("written");
    let error = MeshConfig::read(&path).unwrap_err().to_string();
    assert!(error.contains("at most 1048576 are read"), "{error}");
}
