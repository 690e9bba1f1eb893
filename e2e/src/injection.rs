//! Sidecar injection and the in-process webhooks of `capstan run` on a real API server: the
//! webhook configurations (as a chart would install them, with an empty caBundle that
//! capstan fills), the RBAC capstan needs to fill it, and pods to admit.

/// The namespace and pod label of Istio's default injector.
pub const INJECTION_LABEL: &str = "istio-injection";

/// ClusterRole + binding letting the `capstan` ServiceAccount set the caBundle of the two
/// configurations named (charts/manifests/rbac.yaml does not grant it).
pub fn ca_bundle_rbac_yaml(validating: &str, mutating: &str) -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: capstan-webhook-ca-bundle}}
rules:
- apiGroups: [admissionregistration.k8s.io]
  resources: [validatingwebhookconfigurations]
  resourceNames: [{validating}]
  verbs: [get, patch]
- apiGroups: [admissionregistration.k8s.io]
  resources: [mutatingwebhookconfigurations]
  resourceNames: [{mutating}]
  verbs: [get, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: capstan-webhook-ca-bundle}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: capstan-webhook-ca-bundle}}
subjects:
- {{kind: ServiceAccount, name: capstan, namespace: istio-system}}
"
    )
}

/// Istio's validation webhook for VirtualServices, at `https://127.0.0.1:<port>/validate`,
/// with an empty caBundle.
pub fn validating_config_yaml(name: &str, port: u16) -> String {
    format!(
        "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{name: {name}}}
webhooks:
- name: validation.capstan.io
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  timeoutSeconds: 10
  clientConfig:
    url: https://127.0.0.1:{port}/validate
    caBundle: \"\"
  rules:
  - apiGroups: [networking.istio.io]
    apiVersions: [v1, v1beta1, v1alpha3]
    operations: [CREATE, UPDATE]
    resources: [virtualservices, destinationrules]
"
    )
}

/// Istio's two injection webhooks (see docs/injection.md): namespaces labelled
/// `istio-injection=enabled` unless the pod says `sidecar.istio.io/inject: "false"`, and
/// pods labelled `sidecar.istio.io/inject: "true"` in namespaces without an injection
/// label; at `https://127.0.0.1:<port>/inject`, with an empty caBundle. Fail-closed, so a
/// webhook the API server cannot reach fails the test's pod creation instead of silently
/// admitting it uninjected.
pub fn mutating_config_yaml(name: &str, port: u16) -> String {
    let hook = |hook_name: &str, namespace_selector: &str, object_selector: &str| {
        format!(
            "- name: {hook_name}
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  reinvocationPolicy: Never
  timeoutSeconds: 10
  clientConfig:
    url: https://127.0.0.1:{port}/inject
    caBundle: \"\"
  rules:
  - apiGroups: [\"\"]
    apiVersions: [v1]
    operations: [CREATE]
    resources: [pods]
  namespaceSelector: {namespace_selector}
  objectSelector: {object_selector}
"
        )
    };
    let namespace_hook = hook(
        "namespace.sidecar-injector.capstan.io",
        "{matchExpressions: [{key: istio-injection, operator: In, values: [enabled]}]}",
        "{matchExpressions: [{key: sidecar.istio.io/inject, operator: NotIn, values: [\"false\"]}]}",
    );
    let object_hook = hook(
        "object.sidecar-injector.capstan.io",
        "{matchExpressions: [{key: istio-injection, operator: DoesNotExist}, {key: istio.io/rev, operator: DoesNotExist}]}",
        "{matchExpressions: [{key: sidecar.istio.io/inject, operator: In, values: [\"true\"]}]}",
    );
    format!(
        "apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: {name}}}
webhooks:
{namespace_hook}{object_hook}"
    )
}

/// A bare pod (no controller runs in the test cluster, so no Deployment).
pub fn pod_yaml(namespace: &str, name: &str, labels: &[(&str, &str)]) -> String {
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}: \"{v}\""))
        .collect();
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{app: {name}, {labels}}}
spec:
  serviceAccountName: default
  containers:
  - name: app
    image: example.invalid/app:1
    ports: [{{containerPort: 9080}}]
",
        labels = labels.join(", ")
    )
}

/// Names of the containers of a list (`spec.containers`, `spec.initContainers`) of a pod.
pub fn container_names<'a>(pod: &'a serde_json::Value, list: &str) -> Vec<&'a str> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(serde_json::Value::as_str))
        .collect()
}
