//! The AWS SDK configuration capstan's AWS clients share (Private CA here, Cloud Map in the
//! operator): ring-based rustls over hyper 1, bounded time per call, and no SDK retries —
//! each caller has its own policy for failures.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_acmpca::config::SharedCredentialsProvider;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::endpoint::EndpointPrefix;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// The SDK configuration for `region` (else the standard chain's) and `endpoint_url` (else
/// the region's), credentials from `credentials` or else the standard chain (environment,
/// IRSA web identity, profile, ECS, instance metadata).
pub async fn sdk_config(
    region: Option<&str>,
    endpoint_url: Option<&str>,
    credentials: Option<SharedCredentialsProvider>,
) -> SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(20))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts);
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_string()));
    }
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(credentials) = credentials {
        loader = loader.credentials_provider(credentials);
    }
    loader.load().await
}

/// Keeps an operation's host prefix (Cloud Map's `data-` for DiscoverInstances) off an
/// endpoint given explicitly: the prefix names AWS's data-plane host, and on another
/// endpoint (a test server on `127.0.0.1`) it makes a name that does not resolve. Install it
/// only when the endpoint is overridden. Dropping the prefix before the attempt, rather than
/// rewriting the URI after, keeps the signature over the host actually contacted.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHostPrefix;

impl Intercept for NoHostPrefix {
    fn name(&self) -> &'static str {
        "NoHostPrefix"
    }

    fn modify_before_retry_loop(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().unset::<EndpointPrefix>();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use aws_sdk_servicediscovery::config::interceptors::BeforeTransmitInterceptorContextRef;
    use aws_sdk_servicediscovery::config::{Credentials, Region};
    use aws_sdk_servicediscovery::{Client, Config};

    use super::*;

    /// Records the URI a request would be sent to, and stops it there.
    #[derive(Debug, Clone, Default)]
    struct RecordUri(Arc<Mutex<Option<String>>>);

    impl Intercept for RecordUri {
        fn name(&self) -> &'static str {
            "RecordUri"
        }

        fn read_before_transmit(
            &self,
            context: &BeforeTransmitInterceptorContextRef<'_>,
            _runtime_components: &RuntimeComponents,
            _cfg: &mut ConfigBag,
        ) -> Result<(), BoxError> {
            *self.0.lock().expect("lock") = Some(context.request().uri().to_string());
            Err("recorded".into())
        }
    }

    /// Where DiscoverInstances would go, with and without [`NoHostPrefix`]: nothing is sent.
    async fn discover_uri(no_prefix: bool) -> String {
        let record = RecordUri::default();
        let mut config = Config::builder()
            .behavior_version_latest()
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .endpoint_url("http://127.0.0.1:9")
            .interceptor(record.clone());
        if no_prefix {
            config = config.interceptor(NoHostPrefix);
        }
        let result = Client::from_conf(config.build())
            .discover_instances()
            .namespace_name("ns")
            .service_name("svc")
            .send()
            .await;
        assert!(result.is_err());
        let uri = record.0.lock().expect("lock").clone();
        uri.expect("a request was built")
    }

    #[tokio::test]
    async fn the_sdk_prefixes_an_overridden_endpoint_and_the_interceptor_keeps_it_off() {
        assert_eq!(discover_uri(false).await, "http://data-127.0.0.1:9/");
        assert_eq!(discover_uri(true).await, "http://127.0.0.1:9/");
    }
}
