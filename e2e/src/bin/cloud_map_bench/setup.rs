//! The Cloud Map side of `capstan-cloud-map-bench` in moto: one HTTP namespace, its
//! services and their instances, created a few services at once.

use std::sync::Arc;

use anyhow::Context;
use capstan_e2e::cloudmap::CloudMap;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::{CHANGED_SERVICE, CLOUD_MAP_NAMESPACE, Cli};

/// Every instance's port (`AWS_INSTANCE_PORT`); a round's new instance has its own.
const INSTANCE_PORT: &str = "8080";

/// Instance `j` of service `i`: 10.0.0.1 onwards, 250 a /24.
fn address(i: usize, j: usize, instances: usize) -> String {
    let k = i * instances + j;
    format!(
        "10.{}.{}.{}",
        (k / 250 / 256) % 200,
        (k / 250) % 256,
        k % 250 + 1
    )
}

/// Creates the namespace, the services and their instances; the changed service's id.
pub async fn setup(cloud_map: &CloudMap<'_>, cli: &Cli) -> anyhow::Result<String> {
    let namespace = cloud_map.create_http_namespace(CLOUD_MAP_NAMESPACE).await?;
    let semaphore = Arc::new(Semaphore::new(cli.setup_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let instances = cli.instances;
    let mut changed = None;
    for i in 0..cli.services {
        let permit = semaphore.clone().acquire_owned().await?;
        let client = cloud_map.client().clone();
        let namespace = namespace.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let name = format!("svc-{i}");
            let created = client
                .create_service()
                .namespace_id(&namespace)
                .name(&name)
                .send()
                .await
                .with_context(|| format!("CreateService {name}"))?;
            let id = created
                .service()
                .and_then(|s| s.id())
                .with_context(|| format!("CreateService {name}: no id"))?
                .to_string();
            for j in 0..instances {
                client
                    .register_instance()
                    .service_id(&id)
                    .instance_id(format!("i-{j}"))
                    .attributes("AWS_INSTANCE_IPV4", address(i, j, instances))
                    .attributes("AWS_INSTANCE_PORT", INSTANCE_PORT)
                    .attributes("protocol", "HTTP")
                    .send()
                    .await
                    .with_context(|| format!("RegisterInstance i-{j} in {name}"))?;
            }
            Ok::<_, anyhow::Error>((i, id))
        });
        while let Some(done) = tasks.try_join_next() {
            let (i, id) = done??;
            if i == 0 {
                changed = Some(id);
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        let (i, id) = done??;
        if i == 0 {
            changed = Some(id);
        }
    }
    changed.with_context(|| format!("{CHANGED_SERVICE} not created"))
}
