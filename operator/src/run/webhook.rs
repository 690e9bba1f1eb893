//! `capstan run --webhook-addr`: the admission webhooks (`/validate`, `/inject`) served
//! in-process over TLS, with a serving certificate from capstan's own CA (as the xDS TLS
//! port's), renewed at half life and whenever the CA swaps; in Kubernetes mode the CA's roots
//! are written into the `caBundle` of the webhook configurations, so the API server trusts it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use capstan_ca::{Authority, CaState};
use capstan_xds::net::ConnectionLimits;
use clap::Args;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::Value;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::RunArgs;
use super::ca::ServingNames;
use crate::webhook::inject::{InjectArgs, InjectConfig};
use crate::webhook::tls::SwappableCert;
use crate::webhook::{self, Routes};

/// How long to wait before retrying a failed renewal or caBundle write.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// How often the caBundles are checked even when the roots did not change: a reinstalled
/// chart writes its configurations back with an empty one.
const RECHECK_CA_BUNDLE: Duration = Duration::from_secs(60);

/// The flags of the in-process webhooks.
#[derive(Debug, Args)]
pub struct WebhookRunArgs {
    /// Serve the admission webhooks (POST /validate, POST /inject, GET /ready) over TLS on
    /// this address (istiod's 15017); off when absent. Needs capstan's CA.
    #[arg(long)]
    pub webhook_addr: Option<SocketAddr>,
    /// The Service the API server reaches the webhooks through, in capstan's namespace
    /// (--namespace): the serving certificate names `<service>.<namespace>.svc` and
    /// `<service>.<namespace>.svc.<--domain-suffix>`, `<service>.<namespace>`, and the
    /// --xds-tls-ips.
    #[arg(long, default_value = "capstan")]
    pub webhook_service: String,
    /// Kubernetes mode: the ValidatingWebhookConfiguration whose webhooks' caBundle capstan
    /// keeps set to its CA roots (empty: leave it alone).
    #[arg(long, default_value = "capstan-validation")]
    pub validating_webhook_config: String,
    /// Kubernetes mode: the MutatingWebhookConfiguration (the sidecar injector) whose
    /// webhooks' caBundle capstan keeps set to its CA roots (empty: leave it alone).
    #[arg(long, default_value = "capstan-sidecar-injector")]
    pub mutating_webhook_config: String,
    #[command(flatten)]
    pub inject: InjectArgs,
}

/// The webhook server and its helpers; stopped on drop.
pub(crate) struct RunningWebhook {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RunningWebhook {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the webhooks when --webhook-addr is given; `authority` is capstan's CA, if any.
pub(crate) async fn start(
    args: &RunArgs,
    authority: Option<Arc<Authority>>,
) -> anyhow::Result<Option<RunningWebhook>> {
    let flags = &args.webhook;
    let Some(addr) = flags.webhook_addr else {
        return Ok(None);
    };
    let authority = authority.context(
        "--webhook-addr needs capstan's CA to certify it: give --ca-dir, --cacerts-dir or \
         --ca-pca-arn, or run in a cluster, and keep --xds-tls-addr on",
    )?;
    let namespace = &args.kube.namespace;
    let service = &flags.webhook_service;
    let names = ServingNames {
        dns: vec![
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.{}", args.domain_suffix),
            format!("{service}.{namespace}"),
        ],
        ips: args.tls.xds_tls_ips.clone(),
    };
    let mut swaps = authority.subscribe();
    let state = swaps.borrow_and_update().clone();
    let issued = super::ca::issue(&state, &names)?;
    let cert = SwappableCert::new(&issued.certificate_pem, &issued.private_key_pem)
        .context("the webhook's serving certificate")?;
    let config = Arc::new(cert.server_config().context("the webhook's TLS settings")?);
    let listener = super::bind(addr, "the admission webhooks").await?;
    let inject = InjectConfig::new(&flags.inject, namespace, &args.tls.trust_domain);
    info!(
        xds = %inject.discovery_address,
        image = %inject.proxy_image,
        native = inject.native_sidecars,
        "sidecar injection on /inject"
    );
    let routes = Arc::new(Routes {
        inject: Some(inject),
    });
    let wanted = ConnectionLimits {
        max_connections: webhook::DEFAULT_MAX_CONNECTIONS,
        max_per_ip: webhook::DEFAULT_MAX_CONNECTIONS_PER_IP,
    };
    let (limits, _) = wanted.within_fd_limit(0);
    let local = listener.local_addr()?;
    let mut tasks = vec![
        tokio::spawn(webhook::serve_routes(
            listener,
            limits,
            config,
            routes,
            std::future::pending(),
        )),
        tokio::spawn(renew(swaps, cert, names)),
    ];
    // Tests wait for this line.
    info!(addr = %local, "admission webhook listening on {local}");

    let configurations: Vec<(&str, ApiResource)> = [
        (
            flags.validating_webhook_config.as_str(),
            ApiResource::erase::<ValidatingWebhookConfiguration>(&()),
        ),
        (
            flags.mutating_webhook_config.as_str(),
            ApiResource::erase::<MutatingWebhookConfiguration>(&()),
        ),
    ]
    .into_iter()
    .filter(|(name, _)| !name.is_empty())
    .collect();
    if args.kube.kubernetes() && !configurations.is_empty() {
        let client = args.kube.client().await?;
        for (name, resource) in configurations {
            let api: kube::Api<DynamicObject> = kube::Api::all_with(client.clone(), &resource);
            let kind = resource.kind.clone();
            let task = keep_ca_bundle(api, kind, name.to_string(), authority.subscribe());
            tasks.push(tokio::spawn(task));
        }
    }
    Ok(Some(RunningWebhook { tasks }))
}

/// A new certificate at half life, and at once when the CA swaps.
async fn renew(swaps: watch::Receiver<Arc<CaState>>, cert: SwappableCert, names: ServingNames) {
    super::ca::renew_serving(swaps, names, "webhook", |_, _, issued| {
        Ok(cert.set(&issued.certificate_pem, &issued.private_key_pem)?)
    })
    .await
}

/// The caBundle for `state`: its trust bundle, base64 of the PEMs.
fn ca_bundle(state: &CaState) -> String {
    use base64::Engine;
    let mut pem = String::new();
    for root in &state.trust_bundle {
        pem.push_str(root.trim_end());
        pem.push('\n');
    }
    base64::engine::general_purpose::STANDARD.encode(pem)
}

/// Sets `bundle` as the caBundle of every webhook in `object`; whether anything changed.
fn set_ca_bundles(object: &mut DynamicObject, bundle: &str) -> bool {
    let Some(webhooks) = object
        .data
        .get_mut("webhooks")
        .and_then(Value::as_array_mut)
    else {
        return false;
    };
    let mut changed = false;
    for hook in webhooks {
        let Some(hook) = hook.as_object_mut() else {
            continue;
        };
        let client_config = hook
            .entry("clientConfig")
            .or_insert_with(|| Value::Object(Default::default()));
        let Some(client_config) = client_config.as_object_mut() else {
            continue;
        };
        if client_config.get("caBundle").and_then(Value::as_str) != Some(bundle) {
            client_config.insert("caBundle".into(), Value::from(bundle));
            changed = true;
        }
    }
    changed
}

/// Keeps the caBundle of configuration `name` equal to the CA's roots: at start, whenever the
/// roots change, and every [`RECHECK_CA_BUNDLE`]. A missing configuration is logged and
/// looked for again; nothing here stops capstan.
async fn keep_ca_bundle(
    api: kube::Api<DynamicObject>,
    kind: String,
    name: String,
    mut roots: watch::Receiver<Arc<CaState>>,
) {
    let mut reported_missing = false;
    loop {
        let bundle = ca_bundle(&roots.borrow_and_update());
        let wait = match write_ca_bundle(&api, &name, &bundle).await {
            Ok(Written::Changed) => {
                info!(%kind, %name, "caBundle set to capstan's CA roots");
                reported_missing = false;
                RECHECK_CA_BUNDLE
            }
            Ok(Written::Unchanged) => {
                debug!(%kind, %name, "caBundle up to date");
                RECHECK_CA_BUNDLE
            }
            Ok(Written::Missing) => {
                if !reported_missing {
                    warn!(%kind, %name, "no such webhook configuration yet; its caBundle will be set once it exists");
                    reported_missing = true;
                }
                RETRY_AFTER_FAILURE
            }
            Err(err) => {
                warn!(%kind, %name, %err, "cannot set the caBundle; retrying");
                RETRY_AFTER_FAILURE
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = roots.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

enum Written {
    Changed,
    Unchanged,
    Missing,
}

/// Read, then a strategic merge patch of the caBundles alone (webhooks merge by name), so
/// only `get` and `patch` are needed and nothing else in the configuration is rewritten.
/// The patch carries the read's resourceVersion: a concurrent edit makes it fail (and the
/// next round starts from the new version) rather than be overwritten.
async fn write_ca_bundle(
    api: &kube::Api<DynamicObject>,
    name: &str,
    bundle: &str,
) -> Result<Written, kube::Error> {
    let Some(mut object) = api.get_opt(name).await? else {
        return Ok(Written::Missing);
    };
    if !set_ca_bundles(&mut object, bundle) {
        return Ok(Written::Unchanged);
    }
    let patch = ca_bundle_patch(&object, bundle);
    api.patch(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await?;
    Ok(Written::Changed)
}

/// The strategic merge patch setting `bundle` in every webhook of `object`.
fn ca_bundle_patch(object: &DynamicObject, bundle: &str) -> Value {
    let webhooks: Vec<Value> = object
        .data
        .get("webhooks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|hook| hook.get("name").and_then(Value::as_str))
        .map(|name| serde_json::json!({"name": name, "clientConfig": {"caBundle": bundle}}))
        .collect();
    serde_json::json!({
        "metadata": {"resourceVersion": object.metadata.resource_version},
        "webhooks": webhooks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_webhook_gets_the_bundle_once() {
        let mut object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "capstan-sidecar-injector", "resourceVersion": "7"},
            "webhooks": [
                {"name": "a", "clientConfig": {"url": "https://127.0.0.1/inject", "caBundle": ""}},
                {"name": "b", "clientConfig": {"service": {"name": "capstan", "namespace": "istio-system"}}},
            ]
        }))
        .expect("object");
        assert!(set_ca_bundles(&mut object, "Zm9v"));
        assert_eq!(
            object.data["webhooks"][0]["clientConfig"]["caBundle"],
            "Zm9v"
        );
        assert_eq!(
            object.data["webhooks"][1]["clientConfig"]["caBundle"],
            "Zm9v"
        );
        assert_eq!(
            object.data["webhooks"][1]["clientConfig"]["service"]["name"],
            "capstan"
        );
        assert!(!set_ca_bundles(&mut object, "Zm9v"));
        assert_eq!(
            ca_bundle_patch(&object, "Zm9v"),
            serde_json::json!({
                "metadata": {"resourceVersion": "7"},
                "webhooks": [
                    {"name": "a", "clientConfig": {"caBundle": "Zm9v"}},
                    {"name": "b", "clientConfig": {"caBundle": "Zm9v"}},
                ]
            })
        );
    }
}
