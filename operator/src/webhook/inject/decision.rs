//! Whether a pod gets a sidecar: Istio's rules (`injectRequired` in istio/istio
//! `pkg/kube/inject`), as far as the pod and the request tell them.
//!
//! The namespace's labels are not in an AdmissionReview. Istio's webhook configuration
//! selects namespaces (`istio-injection=enabled`, `istio.io/rev=<rev>`) and opted-in pods
//! (`sidecar.istio.io/inject=true` in an unlabelled namespace) with its `namespaceSelector`
//! and `objectSelector`, and so does capstan's: a pod that reaches the webhook was selected.
//! [`namespace_selects`] spells out those selectors, for the tests and the documentation;
//! [`decide`] applies what only the pod can say.

use serde_json::{Map, Value};

/// The pod label (and, as Istio still honours it, annotation) that turns injection on or off.
pub const INJECT: &str = "sidecar.istio.io/inject";
/// The namespace label of Istio's default injector.
pub const NAMESPACE_INJECTION: &str = "istio-injection";
/// The namespace (or pod) label that picks an injector revision.
pub const REVISION_LABEL: &str = "istio.io/rev";
/// What an injected pod carries: the record of what was added.
pub const STATUS: &str = "sidecar.istio.io/status";
/// The injected proxy container's name.
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// Namespaces never injected, whatever their labels (Istio's `ignoredNamespaces`).
pub const IGNORED_NAMESPACES: [&str; 2] = ["kube-system", "kube-public"];

/// Why a pod is, or is not, injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Inject,
    Skip(Reason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    HostNetwork,
    IgnoredNamespace,
    AlreadyInjected,
    /// `sidecar.istio.io/inject` says no (label, else annotation).
    OptedOut,
    /// Given namespace labels (see [`namespace_selects`]) that select nothing.
    NotSelected,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::HostNetwork => "the pod uses the host's network",
            Reason::IgnoredNamespace => "kube-system and kube-public are never injected",
            Reason::AlreadyInjected => "the pod already has a sidecar",
            Reason::OptedOut => "sidecar.istio.io/inject is false",
            Reason::NotSelected => "neither the namespace nor the pod asks for injection",
        })
    }
}

/// What `sidecar.istio.io/inject` says, as Istio reads it: `y`, `yes`, `true`, `on` are
/// yes; empty is no opinion; anything else is no.
fn truthy(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" => None,
        "y" | "yes" | "true" | "on" => Some(true),
        _ => Some(false),
    }
}

fn string_map<'a>(pod: &'a Value, pointer: &str) -> Option<&'a Map<String, Value>> {
    pod.pointer(pointer).and_then(Value::as_object)
}

fn get<'a>(map: Option<&'a Map<String, Value>>, key: &str) -> Option<&'a str> {
    map.and_then(|m| m.get(key)).and_then(Value::as_str)
}

/// The pod's own say: its label, else its annotation (the label wins, as in Istio).
pub fn pod_opinion(pod: &Value) -> Option<bool> {
    let label = get(string_map(pod, "/metadata/labels"), INJECT).and_then(truthy);
    label.or_else(|| get(string_map(pod, "/metadata/annotations"), INJECT).and_then(truthy))
}

/// Whether the pod already went through an injector (this one or Istio's).
pub fn already_injected(pod: &Value) -> bool {
    let has_status = get(string_map(pod, "/metadata/annotations"), STATUS).is_some();
    let named_proxy = |pointer: &str| {
        pod.pointer(pointer)
            .and_then(Value::as_array)
            .is_some_and(|list| {
                list.iter()
                    .any(|c| c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER))
            })
    };
    has_status || named_proxy("/spec/containers") || named_proxy("/spec/initContainers")
}

/// The selectors of the webhook configuration capstan expects (Istio's): does a pod with
/// `pod_labels` in a namespace labelled `namespace_labels` reach the injector of `revision`?
///
/// - `istio-injection` on the namespace decides alone: `enabled` selects (unless the pod's
///   label is `false`), any other value never does, even for a pod labelled `true`;
/// - else `istio.io/rev=<revision>` on the namespace selects (unless the pod's label is
///   `false`); another revision's namespace is not this injector's;
/// - else the pod is selected by its own `sidecar.istio.io/inject=true` or
///   `istio.io/rev=<revision>` label.
pub fn namespace_selects(
    namespace_labels: &Map<String, Value>,
    pod_labels: &Map<String, Value>,
    revision: &str,
) -> bool {
    let ns = |key: &str| namespace_labels.get(key).and_then(Value::as_str);
    let pod = |key: &str| pod_labels.get(key).and_then(Value::as_str);
    let pod_says_no = pod(INJECT) == Some("false");
    if let Some(value) = ns(NAMESPACE_INJECTION) {
        return value == "enabled" && !pod_says_no;
    }
    if let Some(value) = ns(REVISION_LABEL) {
        return value == revision && !pod_says_no;
    }
    pod(INJECT) == Some("true") || pod(REVISION_LABEL) == Some(revision)
}

/// Decides for a pod in `namespace` that the webhook configuration selected.
pub fn decide(pod: &Value, namespace: &str) -> Decision {
    if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Decision::Skip(Reason::HostNetwork);
    }
    if IGNORED_NAMESPACES.contains(&namespace) {
        return Decision::Skip(Reason::IgnoredNamespace);
    }
    if already_injected(pod) {
        return Decision::Skip(Reason::AlreadyInjected);
    }
    match pod_opinion(pod) {
        Some(false) => Decision::Skip(Reason::OptedOut),
        // Selected by the configuration: injection is the injector's default policy.
        Some(true) | None => Decision::Inject,
    }
}

/// [`decide`] with the namespace's labels known (the `capstan webhook` tests, and callers
/// that read the namespace themselves): [`namespace_selects`] first.
pub fn decide_with_namespace(
    pod: &Value,
    namespace: &str,
    namespace_labels: &Map<String, Value>,
    revision: &str,
) -> Decision {
    let empty = Map::new();
    let pod_labels = string_map(pod, "/metadata/labels").unwrap_or(&empty);
    let pod_annotation_yes =
        get(string_map(pod, "/metadata/annotations"), INJECT).and_then(truthy) == Some(true);
    let unlabelled_namespace = !namespace_labels.contains_key(NAMESPACE_INJECTION)
        && !namespace_labels.contains_key(REVISION_LABEL);
    // Istio's object selector reads the label only; the annotation still opts a pod in
    // where no namespace label says otherwise, as Istio's injector itself honours it.
    let selected = namespace_selects(namespace_labels, pod_labels, revision)
        || (unlabelled_namespace && pod_annotation_yes && pod_opinion(pod) == Some(true));
    if !selected {
        return match decide(pod, namespace) {
            Decision::Inject => Decision::Skip(Reason::NotSelected),
            skipped => skipped,
        };
    }
    decide(pod, namespace)
}
