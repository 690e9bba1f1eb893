//! The sidecar injector (Istio's `sidecar-injector` webhook): `POST /inject` answers an
//! `admission.k8s.io/v1` AdmissionReview of a Pod with a JSONPatch adding `istio-init`
//! (`capstan iptables`) and `istio-proxy` (`capstan agent` + Envoy), their volumes, the
//! `sidecar.istio.io/status` annotation and Istio's labels. See `docs/injection.md`.
//!
//! - [`decision`]: whether a pod is injected;
//! - [`patch`]: what is injected.

pub mod decision;
pub mod patch;

#[cfg(test)]
mod tests;

use base64::Engine;
use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

use super::review::{API_VERSION, KIND, ReviewError};
use decision::Decision;

/// Path the API server posts pod reviews to.
pub const INJECT_PATH: &str = "/inject";

/// The injector's flags (shared by `capstan run` and `capstan webhook`).
#[derive(Debug, Clone, Args)]
pub struct InjectArgs {
    /// Image of the injected `istio-proxy` and `istio-init` containers: `capstan` and
    /// `envoy` on its PATH, and `iptables-restore`.
    #[arg(long, default_value = "capstan-proxy:latest")]
    pub proxy_image: String,
    /// capstan's TLS xDS and CA address as injected proxies dial it (`host:port`; the host is
    /// also the name its certificate must carry) [default: istiod.<namespace>.svc:15012].
    #[arg(long)]
    pub proxy_xds_address: Option<String>,
    /// Inject the proxy as a native sidecar (an init container with `restartPolicy: Always`,
    /// Kubernetes 1.29+); `false`: a regular container. A pod's
    /// `sidecar.istio.io/nativeSidecar` annotation overrides it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub native_sidecars: bool,
    /// The injector's revision: recorded in `sidecar.istio.io/status`, and what
    /// `istio.io/rev` labels select.
    #[arg(long, default_value = "default")]
    pub revision: String,
    /// Deny a pod the injector fails on internally (by default it is admitted without a
    /// sidecar, and the failure logged).
    #[arg(long)]
    pub inject_fail_closed: bool,
}

/// What the injector needs to build a sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    pub proxy_image: String,
    /// `host:port` of capstan's TLS xDS server and CA.
    pub discovery_address: String,
    pub trust_domain: String,
    pub native_sidecars: bool,
    pub revision: String,
    pub fail_closed: bool,
}

impl InjectConfig {
    /// From the flags, for a capstan running in `namespace`.
    pub fn new(args: &InjectArgs, namespace: &str, trust_domain: &str) -> Self {
        Self {
            proxy_image: args.proxy_image.clone(),
            discovery_address: args
                .proxy_xds_address
                .clone()
                .unwrap_or_else(|| format!("istiod.{namespace}.svc:15012")),
            trust_domain: trust_domain.to_string(),
            native_sidecars: args.native_sidecars,
            revision: args.revision.clone(),
            fail_closed: args.inject_fail_closed,
        }
    }

    /// The host of [`Self::discovery_address`].
    pub fn discovery_host(&self) -> &str {
        let address = self.discovery_address.as_str();
        match address.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => {
                host.trim_start_matches('[').trim_end_matches(']')
            }
            _ => address,
        }
    }
}

/// The injector's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InjectResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Base64 of the JSONPatch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl InjectResponse {
    fn allow(uid: String) -> Self {
        Self {
            uid,
            allowed: true,
            patch_type: None,
            patch: None,
            status: None,
            warnings: Vec::new(),
        }
    }

    fn deny(uid: String, code: u16, message: String) -> Self {
        Self {
            allowed: false,
            status: Some(json!({"status": "Failure", "code": code, "message": message})),
            ..Self::allow(uid)
        }
    }

    /// The JSONPatch operations, decoded (tests and logs).
    pub fn operations(&self) -> Option<Vec<Value>> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.patch.as_deref()?)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Answers a serialized AdmissionReview with a serialized one.
pub fn respond(body: &[u8], config: &InjectConfig) -> Result<Vec<u8>, ReviewError> {
    let response = decide(body, config)?;
    Ok(serde_json::to_vec(&json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "response": response,
    }))?)
}

/// Decides on a serialized AdmissionReview of a Pod.
pub fn decide(body: &[u8], config: &InjectConfig) -> Result<InjectResponse, ReviewError> {
    let request = super::review::read_request(body)?;
    let uid = request.uid;
    // Only a pod being created gets a sidecar: containers cannot be added to a running pod.
    if request.operation.as_deref().unwrap_or("CREATE") != "CREATE" {
        return Ok(InjectResponse::allow(uid));
    }
    let Some(pod) = request.object else {
        return Ok(InjectResponse::allow(uid));
    };
    if pod
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k != "Pod")
    {
        return Ok(InjectResponse::allow(uid));
    }
    // On CREATE the namespace often comes only from the request URL.
    let namespace = request
        .namespace
        .filter(|ns| !ns.is_empty())
        .or_else(|| {
            pod.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default();
    let name = pod_name(&pod);
    if let Decision::Skip(reason) = decision::decide(&pod, &namespace) {
        tracing::debug!(pod = %name, namespace, %reason, "not injected");
        return Ok(InjectResponse::allow(uid));
    }
    match patch::inject(&pod, config) {
        Ok((operations, warnings)) => {
            let encoded = match serde_json::to_vec(&operations) {
                Ok(bytes) => base64::engine::general_purpose::STANDARD.encode(bytes),
                Err(err) => return Ok(internal_error(uid, config, &name, &err.to_string())),
            };
            if request.dry_run != Some(true) {
                tracing::info!(pod = %name, namespace, "injected the sidecar");
            }
            Ok(InjectResponse {
                patch_type: Some("JSONPatch".to_string()),
                patch: Some(encoded),
                warnings,
                ..InjectResponse::allow(uid)
            })
        }
        // What the pod's author wrote cannot be honoured: say so rather than start the pod
        // without the capture it asked for.
        Err(err @ (patch::PodError::Annotation { .. } | patch::PodError::NameTaken { .. })) => {
            tracing::info!(pod = %name, namespace, %err, "refused a pod the sidecar cannot be added to");
            Ok(InjectResponse::deny(
                uid,
                400,
                format!("sidecar injection of pod {namespace}/{name}: {err}"),
            ))
        }
        Err(err) => Ok(internal_error(uid, config, &name, &err.to_string())),
    }
}

/// A failure of the injector's own: the pod is admitted without a sidecar unless the
/// injector is fail-closed.
fn internal_error(uid: String, config: &InjectConfig, pod: &str, err: &str) -> InjectResponse {
    if config.fail_closed {
        tracing::error!(
            pod,
            err,
            "sidecar injection failed; denying the pod (--inject-fail-closed)"
        );
        return InjectResponse::deny(uid, 500, format!("sidecar injection failed: {err}"));
    }
    tracing::error!(
        pod,
        err,
        "sidecar injection failed; admitting the pod without a sidecar"
    );
    InjectResponse {
        warnings: vec![format!(
            "sidecar injection failed, the pod has no sidecar: {err}"
        )],
        ..InjectResponse::allow(uid)
    }
}

fn pod_name(pod: &Value) -> String {
    let text = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or("");
    match text("/metadata/name") {
        "" => format!("{}<generated>", text("/metadata/generateName")),
        name => name.to_string(),
    }
}
