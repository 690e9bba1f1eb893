//! Routing that depends on who calls: VirtualService matches on `sourceNamespace` and
//! `sourceLabels` send the sidecars of one namespace, or of workloads with some labels,
//! elsewhere than everybody else's, proven with real Envoys of different namespaces and
//! labels asking for the same host. Logs: `<target>/debug/e2e-logs/<test name>/`.
//!
//! Envoy must be installed (`make test` installs it); a missing Envoy fails the tests.

use std::path::Path;

use anyhow::{Context, ensure};
use capstan_e2e::envoy::AdsMode;
use capstan_e2e::fixtures::REVIEWS_HOST;
use capstan_e2e::mesh::{CONFIG_TIMEOUT, REVIEWS_VS_FILE, ReviewsMesh};

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

async fn start(name: &str, http: &str) -> anyhow::Result<ReviewsMesh> {
    ReviewsMesh::start_http(name, Path::new(UPSTREAM_BIN), http).await
}

/// `sourceNamespace`: the sidecars of `shop` are sent to v2, every other namespace's to v1 —
/// the same request, told apart by who sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_namespace_routes_by_the_callers_namespace() -> anyhow::Result<()> {
    let mut mesh = start(
        "source_namespace_routes_by_the_callers_namespace",
        &format!(
            "  - match: [{{sourceNamespace: shop}}]
    route: [{{destination: {{host: {REVIEWS_HOST}, subset: v2}}}}]
  - route: [{{destination: {{host: {REVIEWS_HOST}, subset: v1}}}}]
"
        ),
    )
    .await?;
    let (shop_envoy, mut shop) = mesh.start_sidecar(AdsMode::Delta, "shop", "cart-0").await?;
    // `shop` is another namespace: the full name, as its applications would use.
    let seen = capstan_e2e::wait_until("shop's requests at v2", CONFIG_TIMEOUT, async || {
        let mut versions = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..10 {
            let reply = shop.reviews(REVIEWS_HOST, &[]).await?;
            *versions.entry(reply.version).or_default() += 1;
        }
        ensure!(versions.keys().all(|v| v == "v2"), "{versions:?}");
        Ok(versions)
    })
    .await
    .with_context(|| format!("logs in {}", mesh.env.log_dir.display()))?;
    ensure!(seen.get("v2") == Some(&10), "{seen:?}");
    mesh.expect_all(&[], "v1", 10).await?;
    shop_envoy.ensure_no_rejected_updates().await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

/// `sourceLabels`: productpage's sidecars are sent to v2, those of `version: canary`
/// workloads to v3, every other sidecar to v1 — three Envoys of one namespace asking for the
/// same host, told apart by their workloads' labels. When the matches go, the labelled
/// sidecars are routed as everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_labels_route_by_the_callers_labels() -> anyhow::Result<()> {
    let mut mesh = start(
        "source_labels_route_by_the_callers_labels",
        &format!(
            "  - match: [{{sourceLabels: {{app: productpage}}}}]
    route: [{{destination: {{host: {REVIEWS_HOST}, subset: v2}}}}]
  - match: [{{sourceLabels: {{version: canary}}}}]
    route: [{{destination: {{host: {REVIEWS_HOST}, subset: v3}}}}]
  - route: [{{destination: {{host: {REVIEWS_HOST}, subset: v1}}}}]
"
        ),
    )
    .await?;
    let productpage_labels = [("app", "productpage"), ("version", "v1")];
    let (productpage_envoy, mut productpage) = mesh
        .start_labelled_sidecar(
            AdsMode::Delta,
            "bookinfo",
            "productpage-0",
            &productpage_labels,
        )
        .await?;
    let canary_labels = [("app", "ratings"), ("version", "canary")];
    let (canary_envoy, mut canary) = mesh
        .start_labelled_sidecar(
            AdsMode::Sotw,
            "bookinfo",
            "ratings-canary-0",
            &canary_labels,
        )
        .await?;
    let log_dir = mesh.env.log_dir.clone();
    let all_at = async |client: &mut capstan_e2e::http::HttpClient, version: &str| {
        let what = format!("10 requests at reviews {version}");
        capstan_e2e::wait_until(&what, CONFIG_TIMEOUT, async || {
            client.expect_all_reviews(&[], version, 10).await
        })
        .await
        .with_context(|| format!("logs in {}", log_dir.display()))
    };
    all_at(&mut productpage, "v2").await?;
    all_at(&mut canary, "v3").await?;
    mesh.expect_all(&[], "v1", 10).await?;

    // A VirtualService without source matches: one route for everyone.
    let plain = capstan_e2e::fixtures::reviews_vs_weighted(&[("v1", 100)]);
    mesh.env.write_config(REVIEWS_VS_FILE, &plain)?;
    all_at(&mut productpage, "v1").await?;
    all_at(&mut canary, "v1").await?;
    mesh.expect_all(&[], "v1", 10).await?;
    for envoy in [&productpage_envoy, &canary_envoy, &mesh.envoy] {
        envoy.ensure_no_rejected_updates().await?;
    }
    Ok(())
}

/// A DestinationRule exported to its own namespace only: its subsets exist for that
/// namespace's sidecars; another namespace's sidecar, routed to a subset by the same
/// VirtualService, finds no such cluster (503), as with istiod. Then each sidecar reads the
/// rule istiod would give it: a mesh-wide rule of the root namespace for `shop` (its `v2`
/// picks v3 pods), and once `shop` has a rule of its own for the host, that one (`v2` → v1
/// pods), while bookinfo keeps its own throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_rule_export_to_scopes_its_subsets() -> anyhow::Result<()> {
    let mut mesh = start(
        "destination_rule_export_to_scopes_its_subsets",
        &format!("  - route: [{{destination: {{host: {REVIEWS_HOST}, subset: v2}}}}]\n"),
    )
    .await?;
    mesh.wait_for_all(&[], "v2", 5).await?;
    mesh.env.write_config(
        "reviews-dr.yaml",
        &capstan_e2e::fixtures::reviews_destination_rule(&["v1", "v2", "v3"])
            .replace("spec:\n", "spec:\n  exportTo: [.]\n"),
    )?;
    let (shop_envoy, mut shop) = mesh.start_sidecar(AdsMode::Sotw, "shop", "cart-0").await?;
    capstan_e2e::wait_until("shop without the subset", CONFIG_TIMEOUT, async || {
        let response = shop.get(REVIEWS_HOST, "/reviews/1", &[]).await?;
        ensure!(response.status.as_u16() == 503, "{}", response.status);
        Ok(())
    })
    .await
    .with_context(|| format!("logs in {}", mesh.env.log_dir.display()))?;
    // bookinfo keeps its subset.
    mesh.expect_all(&[], "v2", 10).await?;

    // A rule whose subset `v2` picks `picks` pods, for `host`, in `namespace`.
    let rule = |namespace: &str, name: &str, host: &str, picks: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  host: \"{host}\"
  subsets: [{{name: v2, labels: {{version: {picks}}}}}]
"
        )
    };
    let log_dir = mesh.env.log_dir.clone();
    let mut shop_at = async |version: &str| {
        capstan_e2e::wait_until(&format!("shop at {version}"), CONFIG_TIMEOUT, async || {
            for _ in 0..10 {
                let reply = shop.reviews(REVIEWS_HOST, &[]).await?;
                ensure!(reply.version == version, "{}", reply.version);
            }
            Ok(())
        })
        .await
        .with_context(|| format!("logs in {}", log_dir.display()))
    };
    mesh.env.write_config(
        "mesh-dr.yaml",
        &rule("istio-system", "mesh", "*.local", "v3"),
    )?;
    shop_at("v3").await?;
    mesh.expect_all(&[], "v2", 10).await?;
    mesh.env
        .write_config("shop-dr.yaml", &rule("shop", "reviews", REVIEWS_HOST, "v1"))?;
    shop_at("v1").await?;
    mesh.expect_all(&[], "v2", 10).await?;
    shop_envoy.ensure_no_rejected_updates().await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A DestinationRule with a `workloadSelector` is the rule of the workloads it selects in its
/// namespace, and of nobody else: its subset `v2` picks the v3 pods for `app: productpage`
/// sidecars, while the default sidecar (same namespace, other labels) and a sidecar of
/// another namespace with the same labels keep bookinfo's rule (v2 is v2). When the rule
/// goes, the selected sidecar is routed as everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_selector_gives_the_rule_to_the_selected_workloads_only() -> anyhow::Result<()> {
    let mut mesh = start(
        "a_workload_selector_gives_the_rule_to_the_selected_workloads_only",
        &format!("  - route: [{{destination: {{host: {REVIEWS_HOST}, subset: v2}}}}]\n"),
    )
    .await?;
    let labels = [("app", "productpage")];
    let (selected_envoy, mut selected) = mesh
        .start_labelled_sidecar(AdsMode::Delta, "bookinfo", "productpage-0", &labels)
        .await?;
    let (elsewhere_envoy, mut elsewhere) = mesh
        .start_labelled_sidecar(AdsMode::Sotw, "shop", "productpage-0", &labels)
        .await?;
    let selecting = format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews-for-productpage, namespace: bookinfo}}
spec:
  host: {REVIEWS_HOST}
  workloadSelector: {{matchLabels: {{app: productpage}}}}
  subsets: [{{name: v2, labels: {{version: v3}}}}]
"
    );
    mesh.env.write_config("selecting-dr.yaml", &selecting)?;
    let log_dir = mesh.env.log_dir.clone();
    let at = async |client: &mut capstan_e2e::http::HttpClient, version: &str| {
        capstan_e2e::wait_until(
            &format!("replies from {version}"),
            CONFIG_TIMEOUT,
            async || {
                for _ in 0..10 {
                    let reply = client.reviews(REVIEWS_HOST, &[]).await?;
                    ensure!(reply.version == version, "{}", reply.version);
                }
                Ok(())
            },
        )
        .await
        .with_context(|| format!("logs in {}", log_dir.display()))
    };
    at(&mut selected, "v3").await?;
    // The rule applies in its own namespace only, and to the labels it selects only.
    at(&mut elsewhere, "v2").await?;
    mesh.expect_all(&[], "v2", 10).await?;
    std::fs::remove_file(mesh.env.config_dir.join("selecting-dr.yaml"))?;
    at(&mut selected, "v2").await?;
    selected_envoy.ensure_no_rejected_updates().await?;
    elsewhere_envoy.ensure_no_rejected_updates().await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A rule selecting workloads that balances by consistent hash gives the routes of the
/// sidecars it selects its hash key, as istiod's: each user of the selected sidecar sticks to
/// one endpoint of reviews, while a sidecar of the same namespace it does not select, reading
/// bookinfo's rule (least request), spreads one user's requests. The rule gone, the selected
/// sidecar's routes hash no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selecting_rules_hash_key_reaches_the_selected_sidecars_routes() -> anyhow::Result<()> {
    let mut mesh = start(
        "a_selecting_rules_hash_key_reaches_the_selected_sidecars_routes",
        &format!("  - route: [{{destination: {{host: {REVIEWS_HOST}}}}}]\n"),
    )
    .await?;
    let (selected_envoy, mut selected) = mesh
        .start_labelled_sidecar(
            AdsMode::Delta,
            "bookinfo",
            "productpage-0",
            &[("app", "productpage")],
        )
        .await?;
    let selecting = format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews-for-productpage, namespace: bookinfo}}
spec:
  host: {REVIEWS_HOST}
  workloadSelector: {{matchLabels: {{app: productpage}}}}
  trafficPolicy: {{loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}}}
"
    );
    mesh.env.write_config("selecting-dr.yaml", &selecting)?;
    let hashes = async |envoy: &capstan_e2e::envoy::Envoy| -> anyhow::Result<bool> {
        let dump = envoy.config_dump(false).await?;
        Ok(capstan_e2e::envoy::dynamic_virtual_hosts(&dump)
            .filter(|vh| {
                vh["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(REVIEWS_HOST))
            })
            .flat_map(|vh| vh["routes"].as_array().cloned().unwrap_or_default())
            .any(|r| r["route"]["hash_policy"][0]["header"]["header_name"] == "x-user"))
    };
    capstan_e2e::wait_until(
        "the selected sidecar's route hashing on x-user",
        CONFIG_TIMEOUT,
        async || {
            ensure!(
                hashes(&selected_envoy).await?,
                "no route to reviews hashes on x-user"
            );
            // The route may come before the cluster is warm.
            let cluster = selected_envoy
                .active_cluster(&format!("outbound|9080||{REVIEWS_HOST}"))
                .await?;
            let ring = cluster.is_some_and(|c| c["lb_policy"] == "RING_HASH");
            ensure!(ring, "reviews' cluster is not balanced by a ring yet");
            Ok(())
        },
    )
    .await
    .with_context(|| format!("logs in {}", mesh.env.log_dir.display()))?;
    for user in ["alice", "bob", "carol", "dave"] {
        let versions = selected.reviews_versions(&[("x-user", user)], 25).await?;
        ensure!(versions.len() == 1, "x-user: {user} reached {versions:?}");
    }
    let mut reached = std::collections::BTreeSet::new();
    for i in 0..30 {
        let user = format!("user-{i}");
        reached.extend(
            selected
                .reviews_versions(&[("x-user", &user)], 3)
                .await?
                .into_keys(),
        );
    }
    ensure!(
        reached.len() > 1,
        "30 different users all reached {reached:?}"
    );
    // The namespace's other sidecar reads bookinfo's rule: no hash, one user spreads.
    ensure!(
        !hashes(&mesh.envoy).await?,
        "the unselected sidecar hashes too"
    );
    let spread = mesh.versions(&[("x-user", "alice")], 30).await?;
    ensure!(
        spread.len() > 1,
        "the unselected sidecar kept alice at {spread:?}"
    );
    std::fs::remove_file(mesh.env.config_dir.join("selecting-dr.yaml"))?;
    capstan_e2e::wait_until(
        "the selected sidecar's routes without a hash",
        CONFIG_TIMEOUT,
        async || {
            ensure!(
                !hashes(&selected_envoy).await?,
                "a route to reviews still hashes"
            );
            Ok(())
        },
    )
    .await?;
    selected_envoy.ensure_no_rejected_updates().await?;
    mesh.envoy.ensure_no_rejected_updates().await
}
