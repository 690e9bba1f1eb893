//! AWS Cloud Map on the patched moto of [`crate::moto`]: a small test-side client that sets up
//! namespaces, services and instances as an operator or a workload would, so tests of
//! capstan's Cloud Map source have something to discover, and that drives the server's
//! servicediscovery faults and call counters.
//!
//! DiscoverInstances and DiscoverInstancesRevision carry the endpoint host prefix `data-` in
//! the service model, and the Rust SDK applies it to an overridden endpoint too
//! (`data-127.0.0.1`, which does not resolve); every client made here carries capstan's
//! [`NoHostPrefix`], which keeps it off an overridden endpoint.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use aws_sdk_servicediscovery::Client;
use aws_sdk_servicediscovery::operation::discover_instances::DiscoverInstancesOutput;
use aws_sdk_servicediscovery::types::{
    CustomHealthStatus, HealthCheckCustomConfig, HealthStatusFilter, OperationTargetType,
};
use capstan_ca::aws::NoHostPrefix;
use capstan_ca::pca::SdkConfig;
use serde_json::json;

use crate::moto::Moto;

/// How a service's instances get their health, as chosen at CreateService.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceHealth {
    /// No health check: instances are UNKNOWN and DiscoverInstances ignores its HealthStatus
    /// filter for them.
    None,
    /// HealthCheckCustomConfig: instances are HEALTHY until UpdateInstanceCustomHealthStatus
    /// (or AWS_INIT_HEALTH_STATUS) says otherwise.
    Custom,
}

/// A servicediscovery client for `sdk`, with capstan's [`NoHostPrefix`] when its endpoint is
/// overridden (as capstan's own client has it).
pub fn client(sdk: &SdkConfig) -> anyhow::Result<Client> {
    let mut config = aws_sdk_servicediscovery::config::Builder::from(sdk);
    if sdk.endpoint_url().is_some() {
        config = config.interceptor(NoHostPrefix);
    }
    Ok(Client::from_conf(config.build()))
}

/// Cloud Map on a running [`Moto`]: setup calls for tests, and the server's servicediscovery
/// faults and counters.
#[derive(Debug)]
pub struct CloudMap<'a> {
    moto: &'a Moto,
    client: Client,
}

impl<'a> CloudMap<'a> {
    /// A client of `moto` with its static test credentials (and retries off, as in
    /// [`Moto::sdk`], so a throttled call shows).
    pub async fn new(moto: &'a Moto) -> anyhow::Result<Self> {
        Ok(Self {
            moto,
            client: client(&moto.sdk().await)?,
        })
    }

    /// The SDK client, for calls this type does not wrap.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creating a namespace answers an operation id; the namespace id is its NAMESPACE target.
    async fn namespace_of(&self, operation_id: Option<&str>, call: &str) -> anyhow::Result<String> {
        let operation_id = operation_id.with_context(|| format!("{call}: no OperationId"))?;
        let output = self
            .client
            .get_operation()
            .operation_id(operation_id)
            .send()
            .await
            .with_context(|| format!("GetOperation {operation_id} ({call})"))?;
        let targets = output.operation().and_then(|o| o.targets());
        match targets.and_then(|t| t.get(&OperationTargetType::Namespace)) {
            Some(id) => Ok(id.clone()),
            None => bail!("{call}: operation {operation_id} has no NAMESPACE target"),
        }
    }

    /// CreateHttpNamespace; the namespace id.
    pub async fn create_http_namespace(&self, name: &str) -> anyhow::Result<String> {
        let output = self
            .client
            .create_http_namespace()
            .name(name)
            .send()
            .await
            .with_context(|| format!("CreateHttpNamespace {name}"))?;
        self.namespace_of(output.operation_id(), "CreateHttpNamespace")
            .await
    }

    /// CreatePrivateDnsNamespace; the namespace id. Use a VPC id per namespace: moto refuses a
    /// second private DNS namespace in one VPC (AWS does not).
    pub async fn create_private_dns_namespace(
        &self,
        name: &str,
        vpc: &str,
    ) -> anyhow::Result<String> {
        let output = self
            .client
            .create_private_dns_namespace()
            .name(name)
            .vpc(vpc)
            .send()
            .await
            .with_context(|| format!("CreatePrivateDnsNamespace {name} in {vpc}"))?;
        self.namespace_of(output.operation_id(), "CreatePrivateDnsNamespace")
            .await
    }

    /// CreateService in `namespace_id`; the service id.
    pub async fn create_service(
        &self,
        namespace_id: &str,
        name: &str,
        health: ServiceHealth,
    ) -> anyhow::Result<String> {
        let mut request = self
            .client
            .create_service()
            .namespace_id(namespace_id)
            .name(name);
        if health == ServiceHealth::Custom {
            request =
                request.health_check_custom_config(HealthCheckCustomConfig::builder().build());
        }
        let output = request
            .send()
            .await
            .with_context(|| format!("CreateService {name} in {namespace_id}"))?;
        let id = output.service().and_then(|s| s.id());
        Ok(id
            .with_context(|| format!("CreateService {name}: no service id"))?
            .to_string())
    }

    /// RegisterInstance: adds the instance, or replaces the attributes of an existing one.
    pub async fn register(
        &self,
        service_id: &str,
        instance_id: &str,
        attributes: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let mut request = self
            .client
            .register_instance()
            .service_id(service_id)
            .instance_id(instance_id);
        for (key, value) in attributes {
            request = request.attributes(*key, *value);
        }
        request
            .send()
            .await
            .with_context(|| format!("RegisterInstance {instance_id} in {service_id}"))?;
        Ok(())
    }

    /// DeregisterInstance.
    pub async fn deregister(&self, service_id: &str, instance_id: &str) -> anyhow::Result<()> {
        self.client
            .deregister_instance()
            .service_id(service_id)
            .instance_id(instance_id)
            .send()
            .await
            .with_context(|| format!("DeregisterInstance {instance_id} in {service_id}"))?;
        Ok(())
    }

    /// UpdateInstanceCustomHealthStatus (services with [`ServiceHealth::Custom`] only). moto
    /// applies it at once; AWS waits about 30 s.
    pub async fn set_health(
        &self,
        service_id: &str,
        instance_id: &str,
        healthy: bool,
    ) -> anyhow::Result<()> {
        let status = if healthy {
            CustomHealthStatus::Healthy
        } else {
            CustomHealthStatus::Unhealthy
        };
        self.client
            .update_instance_custom_health_status()
            .service_id(service_id)
            .instance_id(instance_id)
            .status(status.clone())
            .send()
            .await
            .with_context(|| {
                format!(
                    "UpdateInstanceCustomHealthStatus {instance_id} in {service_id} to {status}"
                )
            })?;
        Ok(())
    }

    /// DeleteService; fails while instances are registered, as on AWS.
    pub async fn delete_service(&self, service_id: &str) -> anyhow::Result<()> {
        self.client
            .delete_service()
            .id(service_id)
            .send()
            .await
            .with_context(|| format!("DeleteService {service_id}"))?;
        Ok(())
    }

    /// DiscoverInstances of `service` in the namespace whose HttpName is `namespace`.
    pub async fn discover(
        &self,
        namespace: &str,
        service: &str,
        health: HealthStatusFilter,
    ) -> anyhow::Result<DiscoverInstancesOutput> {
        self.client
            .discover_instances()
            .namespace_name(namespace)
            .service_name(service)
            .health_status(health)
            .send()
            .await
            .with_context(|| format!("DiscoverInstances {namespace}/{service}"))
    }

    /// DiscoverInstancesRevision of `service` in `namespace`.
    pub async fn revision(&self, namespace: &str, service: &str) -> anyhow::Result<i64> {
        let output = self
            .client
            .discover_instances_revision()
            .namespace_name(namespace)
            .service_name(service)
            .send()
            .await
            .with_context(|| format!("DiscoverInstancesRevision {namespace}/{service}"))?;
        output
            .instances_revision()
            .with_context(|| format!("DiscoverInstancesRevision {namespace}/{service}: none"))
    }

    /// servicediscovery calls the server answered, per operation (the `X-Amz-Target` suffix),
    /// throttled ones included, since the start or [`CloudMap::reset_counts`]: what a test of
    /// a poller asserts its call pattern with.
    pub async fn counts(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let faults = self.moto.faults().await.context("moto fault counters")?;
        serde_json::from_value(faults["counts"]["sd"].clone())
            .with_context(|| format!("counts.sd in {faults}"))
    }

    /// servicediscovery calls the server throttled.
    pub async fn throttled(&self) -> anyhow::Result<u64> {
        let faults = self.moto.faults().await.context("moto fault counters")?;
        faults["counts"]["sd_throttled"]
            .as_u64()
            .with_context(|| format!("counts.sd_throttled in {faults}"))
    }

    /// Zeroes the server's call counters (the Private CA ones too).
    pub async fn reset_counts(&self) -> anyhow::Result<()> {
        self.moto
            .set_faults(&json!({"reset_counts": true}))
            .await
            .context("resetting moto's counters")?;
        Ok(())
    }

    /// The next `n` servicediscovery calls, any operation, answer ThrottlingException; -1:
    /// all of them until changed, 0: none.
    pub async fn throttle(&self, n: i64) -> anyhow::Result<()> {
        self.throttle_only(n, &[]).await
    }

    /// [`CloudMap::throttle`] for the operations named alone (none: every operation), so a
    /// test can still register and deregister while a poller is throttled.
    pub async fn throttle_only(&self, n: i64, operations: &[&str]) -> anyhow::Result<()> {
        self.moto
            .set_faults(&json!({"sd_throttle": n, "sd_throttle_ops": operations}))
            .await
            .with_context(|| format!("setting sd_throttle to {n} for {operations:?}"))?;
        Ok(())
    }
}
