//! Istio's `Sidecar` egress hosts scope what each sidecar receives: a root-namespace default
//! keeps every namespace to its own services (and the root namespace's), a namespace's own
//! `Sidecar` overrides it. Proven with two real Envoys of different namespaces: the scoped one
//! loses the route and the clusters of the services it does not see, the other keeps them.
//! Logs: `<target>/debug/e2e-logs/<test name>/`.
//!
//! Envoy must be installed (`make test` installs it); a missing Envoy fails the tests.

use std::path::Path;

use anyhow::{Context, ensure};
use capstan_e2e::envoy::AdsMode;
use capstan_e2e::fixtures::REVIEWS_HOST;
use capstan_e2e::http::HttpClient;
use capstan_e2e::mesh::{CONFIG_TIMEOUT, ReviewsMesh};

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

fn sidecar(namespace: &str, hosts: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: {namespace}}}
spec:
  egress:
  - hosts: {hosts}
"
    )
}

/// Waits until `client`'s request for reviews gets `status`.
async fn wait_status(client: &mut HttpClient, status: u16, what: &str) -> anyhow::Result<()> {
    capstan_e2e::wait_until(what, CONFIG_TIMEOUT, async || {
        let response = client.get(REVIEWS_HOST, "/reviews/1", &[]).await?;
        ensure!(response.status.as_u16() == status, "{}", response.status);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_egress_hosts_scope_what_each_namespace_receives() -> anyhow::Result<()> {
    let mut mesh = ReviewsMesh::start_http(
        "sidecar_egress_hosts_scope_what_each_namespace_receives",
        Path::new(UPSTREAM_BIN),
        &format!("  - route: [{{destination: {{host: {REVIEWS_HOST}, subset: v1}}}}]\n"),
    )
    .await?;
    let logs = format!("logs in {}", mesh.env.log_dir.display());
    mesh.wait_for_all(&[], "v1", 5).await?;
    // `shop` on Delta, so that a resource leaving its scope is seen removed by name.
    let (shop_envoy, mut shop) = mesh.start_sidecar(AdsMode::Delta, "shop", "cart-0").await?;
    let reply = shop
        .reviews(REVIEWS_HOST, &[])
        .await
        .context(logs.clone())?;
    ensure!(
        reply.version == "v1",
        "unscoped, shop reaches reviews: {reply:?}"
    );
    let before = shop_envoy.outbound_clusters().await?;
    ensure!(
        before.iter().any(|c| c.ends_with(REVIEWS_HOST)),
        "unscoped, shop holds reviews' clusters: {before:?}"
    );

    // The mesh default: each namespace sees its own services and the root namespace's.
    mesh.env.write_config(
        "root-sidecar.yaml",
        &sidecar("istio-system", "[\"./*\", \"istio-system/*\"]"),
    )?;
    wait_status(&mut shop, 404, "shop without a route to reviews")
        .await
        .context(logs.clone())?;
    capstan_e2e::wait_until(
        "shop without reviews' clusters",
        CONFIG_TIMEOUT,
        async || {
            let now = shop_envoy.outbound_clusters().await?;
            ensure!(now.is_empty(), "{now:?}");
            Ok(())
        },
    )
    .await
    .context(logs.clone())?;
    // bookinfo sees its own namespace: nothing changes for it.
    mesh.expect_all(&[], "v1", 10).await?;
    let bookinfo = mesh.envoy.outbound_clusters().await?;
    ensure!(
        bookinfo == before,
        "bookinfo keeps {before:?}, holds {bookinfo:?}"
    );

    // shop's own Sidecar overrides the default: it sees bookinfo again.
    mesh.env
        .write_config("shop-sidecar.yaml", &sidecar("shop", "[\"bookinfo/*\"]"))?;
    wait_status(&mut shop, 200, "shop routed to reviews again")
        .await
        .context(logs.clone())?;
    let reply = shop.reviews(REVIEWS_HOST, &[]).await?;
    ensure!(reply.version == "v1", "{reply:?}");
    ensure!(shop_envoy.outbound_clusters().await? == before);

    shop_envoy.ensure_no_rejected_updates().await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

/// An egress listener with a port: its hosts are routed on that port only. shop's Sidecar
/// imports bookinfo on port 9090: reviews (port 9080) has no route for shop, though its
/// clusters stay (as istiod's, which imports a listener's services' clusters on every port);
/// the same listener on 9080 routes shop to reviews.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_egress_listener_port_routes_its_hosts_on_that_port_only() -> anyhow::Result<()> {
    let mesh = ReviewsMesh::start_http(
        "an_egress_listener_port_routes_its_hosts_on_that_port_only",
        Path::new(UPSTREAM_BIN),
        &format!("  - route: [{{destination: {{host: {REVIEWS_HOST}, subset: v1}}}}]\n"),
    )
    .await?;
    let logs = format!("logs in {}", mesh.env.log_dir.display());
    let (shop_envoy, mut shop) = mesh.start_sidecar(AdsMode::Delta, "shop", "cart-0").await?;
    wait_status(&mut shop, 200, "shop routed to reviews")
        .await
        .context(logs.clone())?;
    let on_port = |port: u16| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: shop}}
spec:
  egress:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: [bookinfo/*]
  - hosts: [./*]
"
        )
    };
    mesh.env.write_config("shop-sidecar.yaml", &on_port(9090))?;
    wait_status(&mut shop, 404, "shop without a route to reviews on 9080")
        .await
        .context(logs.clone())?;
    let clusters = shop_envoy.outbound_clusters().await?;
    ensure!(
        clusters.iter().any(|c| c.ends_with(REVIEWS_HOST)),
        "shop keeps reviews' clusters: {clusters:?}"
    );
    mesh.env.write_config("shop-sidecar.yaml", &on_port(9080))?;
    wait_status(&mut shop, 200, "shop routed to reviews on 9080")
        .await
        .context(logs.clone())?;
    let reply = shop.reviews(REVIEWS_HOST, &[]).await?;
    ensure!(reply.version == "v1", "{reply:?}");
    shop_envoy.ensure_no_rejected_updates().await?;
    mesh.envoy.ensure_no_rejected_updates().await
}
