//! The Cloud Map half of the patched moto (e2e/moto/capstan_moto.py) driven through the Rust
//! SDK, as capstan's Cloud Map source will call it, one server per test: re-registering an
//! instance replaces it and moves the revision on; servicediscovery throttling faults and the
//! per-operation counters, DiscoverInstances included (the SDK's `data-` host prefix undone by
//! `StripHostPrefix`); custom health as DiscoverInstances shows it; list filters, paging and
//! the delete rules of AWS.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Context, ensure};
use aws_sdk_servicediscovery::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_servicediscovery::operation::discover_instances::{
    DiscoverInstancesError, DiscoverInstancesOutput,
};
use aws_sdk_servicediscovery::types::{
    CustomHealthStatus, FilterCondition, HealthStatus, HealthStatusFilter, ServiceFilter,
    ServiceFilterName,
};
use capstan_e2e::cloudmap::{CloudMap, ServiceHealth};
use capstan_e2e::locate::fresh_log_dir;
use capstan_e2e::moto::{Moto, MotoFaults};

async fn moto(test: &str) -> anyhow::Result<Moto> {
    let dir = fresh_log_dir(test)?;
    Moto::start(&dir, &MotoFaults::default()).await
}

/// Instance id → (health, attributes) of a DiscoverInstances answer.
fn by_id(
    output: &DiscoverInstancesOutput,
) -> BTreeMap<String, (Option<HealthStatus>, BTreeMap<String, String>)> {
    output
        .instances()
        .iter()
        .map(|i| {
            let attributes = i.attributes().cloned().unwrap_or_default();
            (
                i.instance_id().unwrap_or_default().to_string(),
                (i.health_status().cloned(), attributes.into_iter().collect()),
            )
        })
        .collect()
}

fn attributes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reregistering_an_instance_replaces_it_and_moves_the_revision_on() -> anyhow::Result<()> {
    let moto = moto("cloudmap_reregister").await?;
    let cm = CloudMap::new(&moto).await?;
    let ns = cm.create_http_namespace("reregister.mesh").await?;
    let svc = cm
        .create_service(&ns, "reviews", ServiceHealth::None)
        .await?;
    let v1 = [
        ("AWS_INSTANCE_IPV4", "10.0.0.1"),
        ("AWS_INSTANCE_PORT", "9080"),
        ("version", "v1"),
    ];
    cm.register(&svc, "reviews-1", &v1).await?;
    let first = cm.revision("reregister.mesh", "reviews").await?;

    let v2 = [
        ("AWS_INSTANCE_IPV4", "10.0.0.2"),
        ("AWS_INSTANCE_PORT", "9080"),
    ];
    cm.register(&svc, "reviews-1", &v2).await?;
    let second = cm.revision("reregister.mesh", "reviews").await?;
    ensure!(second > first, "revision {first} then {second}");

    let found = cm
        .discover("reregister.mesh", "reviews", HealthStatusFilter::All)
        .await?;
    let instances = by_id(&found);
    ensure!(
        instances.len() == 1,
        "one instance after re-registering: {instances:?}"
    );
    ensure!(
        instances["reviews-1"].1 == attributes(&v2),
        "attributes replaced, not merged: {instances:?}"
    );
    ensure!(
        found.instances_revision() == Some(second),
        "DiscoverInstances' revision {:?} is DiscoverInstancesRevision's {second}",
        found.instances_revision()
    );
    let listed = cm
        .client()
        .list_instances()
        .service_id(&svc)
        .send()
        .await
        .context("ListInstances")?;
    ensure!(
        listed.instances().len() == 1,
        "ListInstances: {:?}",
        listed.instances()
    );

    // Registering another and deregistering the first both move it on, never back.
    cm.register(&svc, "reviews-2", &v1).await?;
    let third = cm.revision("reregister.mesh", "reviews").await?;
    cm.deregister(&svc, "reviews-1").await?;
    let fourth = cm.revision("reregister.mesh", "reviews").await?;
    ensure!(
        first < second && second < third && third < fourth,
        "revisions {first}, {second}, {third}, {fourth}"
    );
    let found = cm
        .discover("reregister.mesh", "reviews", HealthStatusFilter::All)
        .await?;
    ensure!(
        by_id(&found).keys().eq(["reviews-2"]),
        "after deregistering: {found:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_calls_fail_once_and_every_call_is_counted() -> anyhow::Result<()> {
    let moto = moto("cloudmap_throttle").await?;
    let cm = CloudMap::new(&moto).await?;
    let ns = cm.create_http_namespace("throttle.mesh").await?;
    let svc = cm
        .create_service(&ns, "ratings", ServiceHealth::None)
        .await?;
    cm.register(&svc, "ratings-1", &[("AWS_INSTANCE_IPV4", "10.0.0.1")])
        .await?;
    cm.reset_counts().await?;

    cm.throttle(1).await?;
    let err = cm
        .client()
        .list_services()
        .send()
        .await
        .expect_err("the first call after throttle(1) fails");
    ensure!(
        err.code() == Some("ThrottlingException") && err.message() == Some("Rate exceeded"),
        "code {:?}, message {:?}: {err:?}",
        err.code(),
        err.message()
    );
    cm.client()
        .list_services()
        .send()
        .await
        .context("ListServices after the throttled one")?;

    // DiscoverInstances goes to the same port through StripHostPrefix and is throttled and
    // counted as a servicediscovery call like the others.
    cm.throttle(1).await?;
    let err = cm
        .discover("throttle.mesh", "ratings", HealthStatusFilter::All)
        .await
        .expect_err("throttled DiscoverInstances");
    let sdk_err = err
        .downcast_ref::<SdkError<DiscoverInstancesError>>()
        .with_context(|| format!("not an SDK error: {err:#}"))?;
    ensure!(
        sdk_err.code() == Some("ThrottlingException"),
        "DiscoverInstances: {err:#}"
    );
    let found = cm
        .discover("throttle.mesh", "ratings", HealthStatusFilter::All)
        .await?;
    ensure!(found.instances().len() == 1, "{found:?}");
    cm.revision("throttle.mesh", "ratings").await?;

    // -1: every call until changed.
    cm.throttle(-1).await?;
    for _ in 0..2 {
        let err = cm.revision("throttle.mesh", "ratings").await.unwrap_err();
        ensure!(
            format!("{err:#}").contains("ThrottlingException"),
            "{err:#}"
        );
    }
    cm.throttle(0).await?;
    cm.revision("throttle.mesh", "ratings").await?;

    let counts = cm.counts().await?;
    let expected: BTreeMap<String, u64> = [
        ("ListServices", 2),
        ("DiscoverInstances", 2),
        ("DiscoverInstancesRevision", 4),
    ]
    .into_iter()
    .map(|(op, n)| (op.to_string(), n))
    .collect();
    ensure!(counts == expected, "counts {counts:?}");
    ensure!(cm.throttled().await? == 4, "sd_throttled");

    cm.reset_counts().await?;
    ensure!(cm.counts().await?.is_empty() && cm.throttled().await? == 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_health_shows_in_discover_instances_and_leaves_the_revision() -> anyhow::Result<()> {
    let moto = moto("cloudmap_health").await?;
    let cm = CloudMap::new(&moto).await?;
    let ns = cm.create_http_namespace("health.mesh").await?;
    let ratings = cm
        .create_service(&ns, "ratings", ServiceHealth::Custom)
        .await?;
    let details = cm
        .create_service(&ns, "details", ServiceHealth::None)
        .await?;
    cm.register(&ratings, "ratings-1", &[("AWS_INSTANCE_IPV4", "10.0.0.1")])
        .await?;
    cm.register(&ratings, "ratings-2", &[("AWS_INSTANCE_IPV4", "10.0.0.2")])
        .await?;
    let ip3 = ("AWS_INSTANCE_IPV4", "10.0.0.3");
    cm.register(
        &ratings,
        "ratings-3",
        &[ip3, ("AWS_INIT_HEALTH_STATUS", "UNHEALTHY")],
    )
    .await?;
    cm.register(&details, "details-1", &[("AWS_INSTANCE_IPV4", "10.0.1.1")])
        .await?;
    let before = cm.revision("health.mesh", "ratings").await?;

    cm.set_health(&ratings, "ratings-1", false).await?;
    let all = by_id(
        &cm.discover("health.mesh", "ratings", HealthStatusFilter::All)
            .await?,
    );
    let health: BTreeMap<_, _> = all
        .iter()
        .map(|(id, (h, _))| (id.as_str(), h.clone()))
        .collect();
    ensure!(
        health
            == BTreeMap::from([
                ("ratings-1", Some(HealthStatus::Unhealthy)),
                ("ratings-2", Some(HealthStatus::Healthy)),
                ("ratings-3", Some(HealthStatus::Unhealthy)),
            ]),
        "HealthStatus ALL: {health:?}"
    );
    let healthy = cm
        .discover("health.mesh", "ratings", HealthStatusFilter::Healthy)
        .await?;
    ensure!(
        by_id(&healthy).keys().eq(["ratings-2"]),
        "HEALTHY: {healthy:?}"
    );
    let after = cm.revision("health.mesh", "ratings").await?;
    ensure!(
        after == before,
        "health changes leave the revision: {before} then {after}"
    );

    // Re-registering keeps the custom health.
    cm.register(&ratings, "ratings-1", &[("AWS_INSTANCE_IPV4", "10.0.0.9")])
        .await?;
    let status = cm
        .client()
        .get_instances_health_status()
        .service_id(&ratings)
        .send()
        .await
        .context("GetInstancesHealthStatus")?;
    let status: HashMap<_, _> = status.status().cloned().unwrap_or_default();
    ensure!(
        status.get("ratings-1") == Some(&HealthStatus::Unhealthy),
        "after re-registering: {status:?}"
    );

    // Without a health check: UNKNOWN, the HealthStatus filter ignored, no custom health.
    let found = by_id(
        &cm.discover("health.mesh", "details", HealthStatusFilter::Healthy)
            .await?,
    );
    ensure!(
        found.get("details-1").map(|(h, _)| h.clone()) == Some(Some(HealthStatus::UnknownValue)),
        "details: {found:?}"
    );
    let err = cm
        .client()
        .update_instance_custom_health_status()
        .service_id(&details)
        .instance_id("details-1")
        .status(CustomHealthStatus::Unhealthy)
        .send()
        .await
        .expect_err("no custom health check in details");
    ensure!(err.code() == Some("CustomHealthNotFound"), "{err:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_paging_and_delete_rules_are_those_of_aws() -> anyhow::Result<()> {
    let moto = moto("cloudmap_lists").await?;
    let cm = CloudMap::new(&moto).await?;
    let alpha = cm.create_http_namespace("alpha.mesh").await?;
    let beta = cm
        .create_private_dns_namespace("beta.mesh", "vpc-beta")
        .await?;
    for name in ["a1", "a2", "a3"] {
        cm.create_service(&alpha, name, ServiceHealth::None).await?;
    }
    let b1 = cm.create_service(&beta, "b1", ServiceHealth::None).await?;
    cm.register(&b1, "b1-1", &[("AWS_INSTANCE_IPV4", "10.0.2.1")])
        .await?;

    let err = cm
        .create_service(&alpha, "a1", ServiceHealth::None)
        .await
        .expect_err("a1 exists in alpha");
    ensure!(
        format!("{err:#}").contains("ServiceAlreadyExists"),
        "{err:#}"
    );

    // A NAMESPACE_ID filter over pages of one: AWS pages first and filters each page, so
    // pages come back empty with a NextToken until beta's service.
    let filter = ServiceFilter::builder()
        .name(ServiceFilterName::NamespaceId)
        .values(&beta)
        .condition(FilterCondition::Eq)
        .build()?;
    let (mut names, mut pages, mut empty_pages, mut token) = (Vec::new(), 0, 0, None);
    loop {
        let page = cm
            .client()
            .list_services()
            .filters(filter.clone())
            .max_results(1)
            .set_next_token(token)
            .send()
            .await
            .context("ListServices")?;
        pages += 1;
        if page.services().is_empty() {
            empty_pages += 1;
        }
        for service in page.services() {
            names.push((
                service.name().unwrap_or_default().to_string(),
                service.instance_count(),
            ));
        }
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    ensure!(
        names == [("b1".to_string(), Some(1))],
        "beta's services: {names:?}"
    );
    ensure!(
        pages == 4 && empty_pages == 3,
        "{pages} pages, {empty_pages} empty"
    );
    let alpha_services = cm
        .client()
        .list_services()
        .filters(
            ServiceFilter::builder()
                .name(ServiceFilterName::NamespaceId)
                .values(&alpha)
                .build()?,
        )
        .send()
        .await
        .context("ListServices alpha")?;
    let alpha_names: BTreeSet<_> = alpha_services
        .services()
        .iter()
        .filter_map(|s| s.name())
        .collect();
    ensure!(
        alpha_names == BTreeSet::from(["a1", "a2", "a3"]),
        "{alpha_names:?}"
    );

    // A private DNS namespace is discoverable over the API by its HttpName.
    let found = cm
        .discover("beta.mesh", "b1", HealthStatusFilter::All)
        .await?;
    ensure!(by_id(&found).keys().eq(["b1-1"]), "{found:?}");

    // DeleteService while instances are registered is refused; then allowed; then not found.
    let err = cm
        .delete_service(&b1)
        .await
        .expect_err("b1 has an instance");
    ensure!(format!("{err:#}").contains("ResourceInUse"), "{err:#}");
    cm.deregister(&b1, "b1-1").await?;
    cm.delete_service(&b1).await?;
    let err = cm.delete_service(&b1).await.expect_err("b1 is gone");
    ensure!(format!("{err:#}").contains("ServiceNotFound"), "{err:#}");
    Ok(())
}
