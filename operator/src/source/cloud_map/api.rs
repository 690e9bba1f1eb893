//! The Cloud Map calls the poller makes, behind a trait so the poller is tested without AWS;
//! [`SdkApi`] makes them with the AWS SDK.

use aws_sdk_servicediscovery::Client;
use aws_sdk_servicediscovery::config::SharedCredentialsProvider;
use aws_sdk_servicediscovery::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_servicediscovery::types::{
    FilterCondition, HealthStatusFilter, ServiceFilter, ServiceFilterName,
};
use aws_smithy_async::future::pagination_stream::PaginationStream;
use std::collections::BTreeMap;

use super::convert::{Instance, InstanceHealth};

/// Most pages read of one listing: 100 pages of 100 is more than an account's quota of
/// namespaces or of services per namespace.
const MAX_PAGES: u64 = 100;
/// The largest page the listings take.
const PAGE: i32 = 100;
/// DiscoverInstances' largest page (it has no paging).
const MAX_INSTANCES: i32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub id: String,
    pub name: String,
    /// The name the discovery calls take: its `HttpName`, which AWS makes differ from the
    /// name (a hash added) when a name is reused.
    pub http_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub id: String,
    pub name: String,
    /// A Route 53 or custom health check is configured.
    pub health_checked: bool,
}

/// A failed call: which, AWS's error code, and whether AWS asked to slow down.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Cloud Map {operation}: {message}")]
pub struct ApiError {
    pub operation: &'static str,
    /// AWS's code (`ThrottlingException`, `AccessDeniedException`…); `None` when no answer
    /// came (connection, timeout).
    pub code: Option<String>,
    pub message: String,
    pub throttled: bool,
}

impl ApiError {
    fn of<E, R>(operation: &'static str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let code = err.code().map(str::to_string);
        let throttled = matches!(
            code.as_deref(),
            Some(
                "ThrottlingException"
                    | "Throttling"
                    | "RequestLimitExceeded"
                    | "TooManyRequestsException"
                    | "RequestThrottledException"
            )
        );
        ApiError {
            operation,
            code,
            message: DisplayErrorContext(&err).to_string(),
            throttled,
        }
    }
}

/// A listing read page by page: what it holds, and how many calls (pages) that took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paged<T> {
    pub items: T,
    pub pages: u64,
}

/// The calls a poll makes. Each returns the whole answer (every page).
#[allow(async_fn_in_trait)]
pub trait CloudMapApi {
    async fn namespaces(&self) -> Result<Paged<Vec<NamespaceInfo>>, ApiError>;
    async fn services(&self, namespace_id: &str) -> Result<Paged<Vec<ServiceInfo>>, ApiError>;
    /// `DiscoverInstancesRevision` (`namespace`: its HttpName): changes when instances
    /// register, deregister or change attributes (not when their health changes).
    async fn revision(&self, namespace: &str, service: &str) -> Result<i64, ApiError>;
    /// Every instance, whatever its health, with its health (`namespace`: its HttpName).
    async fn instances(&self, namespace: &str, service: &str) -> Result<Vec<Instance>, ApiError>;
    /// Instance id → health, for services with a health check.
    async fn health(
        &self,
        service_id: &str,
    ) -> Result<Paged<BTreeMap<String, InstanceHealth>>, ApiError>;
}

/// Cloud Map through the AWS SDK.
#[derive(Debug, Clone)]
pub struct SdkApi {
    client: Client,
}

impl SdkApi {
    /// A client for `region` (else the standard chain's) and `endpoint` (else the region's),
    /// credentials from `credentials` or else the standard chain (IRSA on EKS), no SDK
    /// retries (the poller backs off on its own).
    pub async fn new(
        region: Option<&str>,
        endpoint: Option<&str>,
        credentials: Option<SharedCredentialsProvider>,
    ) -> Self {
        let sdk = capstan_ca::aws::sdk_config(region, endpoint, credentials).await;
        let mut config = aws_sdk_servicediscovery::config::Builder::from(&sdk);
        if endpoint.is_some() {
            config = config.interceptor(capstan_ca::aws::NoHostPrefix);
        }
        SdkApi {
            client: Client::from_conf(config.build()),
        }
    }
}

/// Reads up to [`MAX_PAGES`] pages of a listing, handing each to `read`; returns how many
/// calls that took.
async fn each_page<P, E, R>(
    operation: &'static str,
    mut pages: PaginationStream<Result<P, SdkError<E, R>>>,
    mut read: impl FnMut(P),
) -> Result<u64, ApiError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let mut count = 0;
    while let Some(page) = pages.next().await {
        read(page.map_err(|e| ApiError::of(operation, e))?);
        count += 1;
        if count == MAX_PAGES {
            break;
        }
    }
    Ok(count)
}

impl CloudMapApi for SdkApi {
    async fn namespaces(&self) -> Result<Paged<Vec<NamespaceInfo>>, ApiError> {
        let mut items = Vec::new();
        let listing = self.client.list_namespaces().into_paginator();
        let pages = each_page("ListNamespaces", listing.page_size(PAGE).send(), |page| {
            items.extend(page.namespaces().iter().filter_map(|ns| {
                let name = ns.name()?.to_string();
                let http_name = ns
                    .properties()
                    .and_then(|p| p.http_properties())
                    .and_then(|h| h.http_name())
                    .map_or_else(|| name.clone(), str::to_string);
                Some(NamespaceInfo {
                    id: ns.id()?.to_string(),
                    name,
                    http_name,
                })
            }));
        })
        .await?;
        Ok(Paged { items, pages })
    }

    async fn services(&self, namespace_id: &str) -> Result<Paged<Vec<ServiceInfo>>, ApiError> {
        let filter = ServiceFilter::builder()
            .name(ServiceFilterName::NamespaceId)
            .values(namespace_id)
            .condition(FilterCondition::Eq)
            .build()
            .map_err(|e| ApiError {
                operation: "ListServices",
                code: None,
                message: e.to_string(),
                throttled: false,
            })?;
        let mut items = Vec::new();
        let listing = self.client.list_services().filters(filter).into_paginator();
        let pages = each_page("ListServices", listing.page_size(PAGE).send(), |page| {
            items.extend(page.services().iter().filter_map(|s| {
                Some(ServiceInfo {
                    id: s.id()?.to_string(),
                    name: s.name()?.to_string(),
                    health_checked: s.health_check_config().is_some()
                        || s.health_check_custom_config().is_some(),
                })
            }));
        })
        .await?;
        Ok(Paged { items, pages })
    }

    async fn revision(&self, namespace: &str, service: &str) -> Result<i64, ApiError> {
        let out = self
            .client
            .discover_instances_revision()
            .namespace_name(namespace)
            .service_name(service)
            .send()
            .await
            .map_err(|e| ApiError::of("DiscoverInstancesRevision", e))?;
        Ok(out.instances_revision().unwrap_or_default())
    }

    async fn instances(&self, namespace: &str, service: &str) -> Result<Vec<Instance>, ApiError> {
        let out = self
            .client
            .discover_instances()
            .namespace_name(namespace)
            .service_name(service)
            .health_status(HealthStatusFilter::All)
            .max_results(MAX_INSTANCES)
            .send()
            .await
            .map_err(|e| ApiError::of("DiscoverInstances", e))?;
        Ok(out
            .instances()
            .iter()
            .filter_map(|i| {
                Some(Instance {
                    id: i.instance_id()?.to_string(),
                    attributes: i
                        .attributes()
                        .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default(),
                    health: i.health_status().map_or(InstanceHealth::Unknown, |h| {
                        InstanceHealth::parse(h.as_str())
                    }),
                })
            })
            .collect())
    }

    async fn health(
        &self,
        service_id: &str,
    ) -> Result<Paged<BTreeMap<String, InstanceHealth>>, ApiError> {
        let mut items = BTreeMap::new();
        let listing = self
            .client
            .get_instances_health_status()
            .service_id(service_id)
            .into_paginator();
        let pages = each_page(
            "GetInstancesHealthStatus",
            listing.page_size(PAGE).send(),
            |page| {
                items.extend(
                    page.status()
                        .into_iter()
                        .flatten()
                        .map(|(id, h)| (id.clone(), InstanceHealth::parse(h.as_str()))),
                );
            },
        )
        .await?;
        Ok(Paged { items, pages })
    }
}
