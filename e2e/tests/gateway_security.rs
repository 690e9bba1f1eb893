//! AuthorizationPolicy and RequestAuthentication on a real ingress gateway Envoy (a `router`
//! labelled `istio: ingressgateway`, as Istio's gateway pods are), with policies in the root
//! namespace selecting it, as Istio's "JWT at the ingress gateway" task sets them up; and a
//! gateway whose pod runs in its own namespace, which gets that namespace's policies.
//! Logs: `<target>/debug/e2e-logs/<test name>/`.

use std::path::Path;

use anyhow::ensure;
use capstan_e2e::envoy::AdsMode;
use capstan_e2e::gateway_mesh::{GatewayMesh, INGRESS_LABELS, http_gateway, shop};
use capstan_e2e::http::HttpClient;
use capstan_e2e::jwt::{Issuer, now};
use capstan_e2e::mesh::CONFIG_TIMEOUT;

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

/// The gateway requires a token of its issuer for `/reviews*` and refuses `/reviews/admin*`
/// to everyone: no token gets 403, a valid one reaches reviews, an expired one gets 401 from
/// the JWT filter, and the DENY beats the ALLOW with a valid token too. Without the policies,
/// requests without a token are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_gateway_requires_a_jwt_and_denies_a_path() -> anyhow::Result<()> {
    let port = capstan_e2e::gateway_mesh::gateway_port();
    let mesh = GatewayMesh::start(
        "gateway_security_jwt",
        Path::new(UPSTREAM_BIN),
        &format!("{}---\n{}", http_gateway(port, ""), shop("v2")),
    )
    .await?;
    let addr = mesh.listening(port).await?;
    let issuer = Issuer::new("https://issuer.shop.example")?;
    let policies = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: {issuer}
    jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ['*']}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: ['/reviews/admin*']}}}}]
",
        issuer = issuer.issuer,
        jwks = issuer.jwks(),
    );
    let status = async |path: &str, token: Option<&str>| -> anyhow::Result<u16> {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| ("authorization", b))
            .into_iter()
            .collect();
        let response = HttpClient::new(addr)
            .get("shop.example.com", path, &headers)
            .await?;
        Ok(response.status.as_u16())
    };
    capstan_e2e::wait_until("served before any policy", CONFIG_TIMEOUT, async || {
        let got = status("/reviews/1", None).await?;
        ensure!(got == 200, "{got}");
        Ok(())
    })
    .await?;

    mesh.env.write_config("security.yaml", &policies)?;
    capstan_e2e::wait_until("a token required", CONFIG_TIMEOUT, async || {
        let got = status("/reviews/1", None).await?;
        ensure!(got == 403, "no token: {got}");
        Ok(())
    })
    .await?;
    let valid = issuer.token("alice", now() + 3600)?;
    let expired = issuer.token("alice", now() - 120)?;
    for (path, token, want, what) in [
        ("/reviews/1", Some(valid.as_str()), 200, "a valid token"),
        (
            "/reviews/1",
            Some(expired.as_str()),
            401,
            "an expired token",
        ),
        (
            "/reviews/admin/1",
            Some(valid.as_str()),
            403,
            "a denied path",
        ),
    ] {
        let got = status(path, token).await?;
        ensure!(got == want, "{what} on {path}: {got}, expected {want}");
    }

    std::fs::remove_file(mesh.env.config_dir.join("security.yaml"))?;
    capstan_e2e::wait_until("served without a token again", CONFIG_TIMEOUT, async || {
        let got = status("/reviews/1", None).await?;
        ensure!(got == 200, "{got}");
        Ok(())
    })
    .await?;
    mesh.gateway.ensure_no_rejected_updates().await
}

/// A gateway pod in `istio-ingress` (as Istio's gateway chart installs it): a DENY policy of
/// that namespace selecting it refuses `/reviews/admin*` there, while `/reviews/1` is served;
/// a deny-all of another namespace does not touch it. Without the DENY, admin is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_in_its_own_namespace_gets_that_namespaces_policies() -> anyhow::Result<()> {
    let port = capstan_e2e::gateway_mesh::gateway_port();
    let mesh = GatewayMesh::start_in(
        "gateway_security_namespace",
        Path::new(UPSTREAM_BIN),
        &format!("{}---\n{}", http_gateway(port, ""), shop("v2")),
        AdsMode::Delta,
        INGRESS_LABELS,
        "istio-ingress",
    )
    .await?;
    let addr = mesh.listening(port).await?;
    let status = async |path: &str| -> anyhow::Result<u16> {
        let response = HttpClient::new(addr)
            .get("shop.example.com", path, &[])
            .await?;
        Ok(response.status.as_u16())
    };
    let expect = async |what: &str, checks: &[(&str, u16)]| {
        capstan_e2e::wait_until(what, CONFIG_TIMEOUT, async || {
            for (path, want) in checks {
                let got = status(path).await?;
                ensure!(got == *want, "{path}: {got}, expected {want}");
            }
            Ok(())
        })
        .await
    };
    expect("served before any policy", &[("/reviews/admin/1", 200)]).await?;
    mesh.env.write_config(
        "policies.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: istio-ingress}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: ['/reviews/admin*']}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: bookinfo}
spec: {}
",
    )?;
    expect(
        "the gateway namespace's DENY in force",
        &[("/reviews/admin/1", 403), ("/reviews/1", 200)],
    )
    .await?;
    std::fs::remove_file(mesh.env.config_dir.join("policies.yaml"))?;
    expect("admin served again", &[("/reviews/admin/1", 200)]).await?;
    mesh.gateway.ensure_no_rejected_updates().await
}
