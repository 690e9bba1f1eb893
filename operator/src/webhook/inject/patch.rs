//! What an injected pod gets, and the JSONPatch (RFC 6902) that adds it.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::InjectConfig;
use super::decision::{INJECT, PROXY_CONTAINER, REVISION_LABEL, STATUS};
use crate::capture_rules::{self, DEFAULT_EXCLUDED_INBOUND_PORTS, PROXY_ID};

/// The traffic-capture init container.
pub const INIT_CONTAINER: &str = "istio-init";
/// Where the agent reads its token (its `--token-file` default), and the token's audience
/// (the CA's `--ca-token-audiences` default).
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
pub const TOKEN_AUDIENCE: &str = "istio-ca";
/// The ConfigMap capstan publishes its roots in, in every namespace.
pub const ROOT_CERT_CONFIGMAP: &str = "istio-ca-root-cert";
/// Per-pod switch between a native sidecar and a regular container (Istio's annotation).
pub const NATIVE_SIDECAR: &str = "sidecar.istio.io/nativeSidecar";
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

pub const INCLUDE_OUTBOUND_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
pub const EXCLUDE_OUTBOUND_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// How the pod's traffic reaches the proxy: `REDIRECT` (iptables, the default) or `NONE`
/// (no capture, no `istio-init`: where the pod may not change its iptables, as on EKS
/// Fargate; its `Sidecar` binds the listeners it needs, `captureMode: NONE`).
pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";

/// The annotations under Istio's prefixes this injector acts on; any other is warned about.
pub const HONOURED_ANNOTATIONS: [&str; 10] = [
    INJECT,
    INTERCEPTION_MODE,
    STATUS,
    NATIVE_SIDECAR,
    INCLUDE_OUTBOUND_RANGES,
    EXCLUDE_OUTBOUND_RANGES,
    INCLUDE_INBOUND_PORTS,
    EXCLUDE_INBOUND_PORTS,
    EXCLUDE_OUTBOUND_PORTS,
    REVISION_LABEL,
];
const ISTIO_ANNOTATION_PREFIXES: [&str; 5] = [
    "sidecar.istio.io/",
    "traffic.sidecar.istio.io/",
    "proxy.istio.io/",
    "inject.istio.io/",
    "status.sidecar.istio.io/",
];

/// (volume, mount path) of the proxy container; the volumes themselves are in [`volumes`].
const PROXY_MOUNTS: [(&str, &str); 8] = [
    ("workload-socket", "/var/run/secrets/workload-spiffe-uds"),
    ("credential-socket", "/var/run/secrets/credential-uds"),
    (
        "workload-certs",
        "/var/run/secrets/workload-spiffe-credentials",
    ),
    ("istiod-ca-cert", "/var/run/secrets/istio"),
    ("istio-data", "/var/lib/istio/data"),
    ("istio-envoy", "/etc/istio/proxy"),
    ("istio-token", TOKEN_DIR),
    ("istio-podinfo", "/etc/istio/pod"),
];

/// A pod the injector cannot add a sidecar to, for a reason its author can fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodError {
    #[error("annotation {annotation}: {source}")]
    Annotation {
        annotation: &'static str,
        source: capture_rules::ListError,
    },
    #[error("the pod already has a {what} named {name:?}, which the sidecar needs")]
    NameTaken { what: &'static str, name: String },
    #[error("the pod has no spec.containers list")]
    NoContainers,
}

/// The JSONPatch adding the sidecar to `pod`, and the warnings for its author.
pub fn inject(pod: &Value, config: &InjectConfig) -> Result<(Vec<Value>, Vec<String>), PodError> {
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .ok_or(PodError::NoContainers)?;
    let init_containers = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array);
    let volumes = pod.pointer("/spec/volumes").and_then(Value::as_array);
    let annotations = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    let labels = pod.pointer("/metadata/labels").and_then(Value::as_object);
    let annotation = |key: &str| text(annotations, key);

    for (what, list, name) in [
        ("container", Some(containers), INIT_CONTAINER),
        ("init container", init_containers, INIT_CONTAINER),
    ] {
        if named(list, name) {
            return Err(PodError::NameTaken {
                what,
                name: name.to_string(),
            });
        }
    }
    for (name, _) in PROXY_MOUNTS {
        if named(volumes, name) {
            return Err(PodError::NameTaken {
                what: "volume",
                name: name.to_string(),
            });
        }
    }

    let native = match annotation(NATIVE_SIDECAR).map(str::trim) {
        Some("true") => true,
        Some("false") => false,
        _ => config.native_sidecars,
    };
    let mut warnings = Vec::new();
    let capture = match annotation(INTERCEPTION_MODE).map(str::trim) {
        None | Some("REDIRECT") => true,
        Some("NONE") => false,
        Some(other) => {
            warnings.push(format!(
                "annotation {INTERCEPTION_MODE}: {other} is not honoured (REDIRECT and NONE \
                 are); the pod's traffic is captured with REDIRECT"
            ));
            true
        }
    };
    let new_labels = added_labels(pod, labels);
    let mut all_labels: BTreeMap<String, String> = labels
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    all_labels.extend(new_labels.iter().map(|(k, v)| (k.to_string(), v.clone())));

    let init = if capture {
        Some(init_container(config, annotations)?)
    } else {
        None
    };
    let proxy = proxy_container(config, &all_labels, native);

    let mut ops = Vec::new();
    // istio-init first, so the capture is in place before any other init container runs;
    // a native sidecar right after it, so those containers' traffic has its proxy.
    let mut front: Vec<Value> = init.into_iter().collect();
    if native {
        front.push(proxy.clone());
    }
    if !front.is_empty() {
        prepend(&mut ops, "/spec/initContainers", init_containers, front);
    }
    if !native {
        append(&mut ops, "/spec/containers", Some(containers), vec![proxy]);
    }
    append(&mut ops, "/spec/volumes", volumes, self::volumes());

    let mut init_names = Vec::new();
    if capture {
        init_names.push(INIT_CONTAINER);
    }
    let container_names = if native {
        init_names.push(PROXY_CONTAINER);
        vec![]
    } else {
        vec![PROXY_CONTAINER]
    };
    let status = json!({
        "initContainers": init_names,
        "containers": container_names,
        "volumes": PROXY_MOUNTS.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        "imagePullSecrets": null,
        "revision": config.revision,
    });
    let mut new_annotations = vec![(STATUS, status.to_string())];
    if annotation(REVISION_LABEL).is_none() {
        new_annotations.push((REVISION_LABEL, config.revision.clone()));
    }
    let first_app = containers
        .first()
        .and_then(|c| c.get("name"))
        .and_then(Value::as_str);
    if let (None, Some(first)) = (annotation(DEFAULT_CONTAINER), first_app) {
        new_annotations.push((DEFAULT_CONTAINER, first.to_string()));
    }
    add_entries(&mut ops, "/metadata/labels", labels, new_labels);
    add_entries(
        &mut ops,
        "/metadata/annotations",
        annotations,
        new_annotations,
    );

    warnings.extend(
        annotations
            .into_iter()
            .flatten()
            .map(|(key, _)| key)
            .filter(|key| ISTIO_ANNOTATION_PREFIXES.iter().any(|p| key.starts_with(p)))
            .filter(|key| !HONOURED_ANNOTATIONS.contains(&key.as_str()))
            .map(|key| {
                format!(
                    "capstan's sidecar injector does not honour annotation {key}; it is ignored"
                )
            }),
    );
    Ok((ops, warnings))
}

fn text<'a>(map: Option<&'a Map<String, Value>>, key: &str) -> Option<&'a str> {
    map.and_then(|m| m.get(key)).and_then(Value::as_str)
}

fn named(list: Option<&Vec<Value>>, name: &str) -> bool {
    list.into_iter()
        .flatten()
        .any(|item| item.get("name").and_then(Value::as_str) == Some(name))
}

/// The labels Istio's injector adds where the pod has none of its own.
fn added_labels(pod: &Value, labels: Option<&Map<String, Value>>) -> Vec<(&'static str, String)> {
    let label = |key: &str| {
        labels
            .and_then(|l| l.get(key))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let mut added = Vec::new();
    if label(TLS_MODE_LABEL).is_none() {
        added.push((TLS_MODE_LABEL, "istio".to_string()));
    }
    if label(CANONICAL_NAME).is_none() {
        let name = label("app.kubernetes.io/name")
            .or_else(|| label("app"))
            .map(str::to_string)
            .unwrap_or_else(|| workload_name(pod));
        added.push((CANONICAL_NAME, name));
    }
    if label(CANONICAL_REVISION).is_none() {
        let revision = label("app.kubernetes.io/version")
            .or_else(|| label("version"))
            .unwrap_or("latest");
        added.push((CANONICAL_REVISION, revision.to_string()));
    }
    added
}

/// The workload a pod belongs to: its Deployment's name for a ReplicaSet's pod
/// (`reviews-v1-545db77b95-` → `reviews-v1`), else its generated or given name.
fn workload_name(pod: &Value) -> String {
    let text = |pointer: &str| pod.pointer(pointer).and_then(Value::as_str).unwrap_or("");
    let generate = text("/metadata/generateName").trim_end_matches('-');
    let hash = text("/metadata/labels/pod-template-hash");
    if !generate.is_empty() {
        let suffix = format!("-{hash}");
        return match generate.strip_suffix(&suffix) {
            Some(deployment) if !hash.is_empty() && !deployment.is_empty() => {
                deployment.to_string()
            }
            _ => generate.to_string(),
        };
    }
    match text("/metadata/name") {
        "" => "unknown".to_string(),
        name => name.to_string(),
    }
}

/// `capstan iptables` with the pod's capture annotations, checked now so that a typo fails
/// the pod's creation with a message rather than its start.
fn init_container(
    config: &InjectConfig,
    annotations: Option<&Map<String, Value>>,
) -> Result<Value, PodError> {
    let checked = |key: &'static str,
                   default: &str,
                   parse: fn(&str) -> Result<(), capture_rules::ListError>| {
        let value = text(annotations, key).unwrap_or(default).trim().to_string();
        parse(&value).map_err(|source| PodError::Annotation {
            annotation: key,
            source,
        })?;
        Ok::<String, PodError>(value)
    };
    let ports = |t: &str| capture_rules::parse_ports(t).map(drop);
    let ports_or_all = |t: &str| capture_rules::parse_ports_or_all(t).map(drop);
    let ranges = |t: &str| capture_rules::parse_ranges(t).map(drop);
    let ranges_or_all = |t: &str| capture_rules::parse_ranges_or_all(t).map(drop);
    let include_outbound = checked(INCLUDE_OUTBOUND_RANGES, "*", ranges_or_all)?;
    let exclude_outbound = checked(EXCLUDE_OUTBOUND_RANGES, "", ranges)?;
    let include_inbound = checked(INCLUDE_INBOUND_PORTS, "*", ports_or_all)?;
    let extra_excluded_inbound = checked(EXCLUDE_INBOUND_PORTS, "", ports)?;
    let exclude_outbound_ports = checked(EXCLUDE_OUTBOUND_PORTS, "", ports)?;
    // Istio's own ports stay excluded whatever the annotation adds.
    let mut excluded_inbound: Vec<String> = DEFAULT_EXCLUDED_INBOUND_PORTS
        .iter()
        .map(u16::to_string)
        .collect();
    excluded_inbound.extend(
        extra_excluded_inbound
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty() && !excluded_inbound.iter().any(|e| e == p))
            .map(str::to_string)
            .collect::<Vec<_>>(),
    );
    let args = [
        "iptables",
        "--outbound-port",
        &capture_rules::OUTBOUND_CAPTURE_PORT.to_string(),
        "--inbound-port",
        &capture_rules::INBOUND_CAPTURE_PORT.to_string(),
        "--proxy-uid",
        &PROXY_ID.to_string(),
        "--proxy-gid",
        &PROXY_ID.to_string(),
        "--include-outbound-ip-ranges",
        &include_outbound,
        "--exclude-outbound-ip-ranges",
        &exclude_outbound,
        "--include-inbound-ports",
        &include_inbound,
        "--exclude-inbound-ports",
        &excluded_inbound.join(","),
        "--exclude-outbound-ports",
        &exclude_outbound_ports,
    ];
    Ok(json!({
        "name": INIT_CONTAINER,
        "image": config.proxy_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["capstan"],
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "40Mi"},
            "limits": {"cpu": "2", "memory": "1Gi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": false,
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }))
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}})
}

/// `capstan agent` beside Envoy, as uid/gid 1337 (the capture lets its traffic pass).
fn proxy_container(
    config: &InjectConfig,
    labels: &BTreeMap<String, String>,
    native: bool,
) -> Value {
    let server = config.discovery_host();
    let mut args: Vec<String> = [
        "agent",
        "--ca-root-cert",
        "/var/run/secrets/istio/root-cert.pem",
        "--ca-server-name",
        server,
        "--token-file",
        &format!("{TOKEN_DIR}/istio-token"),
        "--sds-socket",
        "/var/run/secrets/workload-spiffe-uds/socket",
        "--xds-address",
        &config.discovery_address,
        "--xds-server-name",
        server,
        "--bootstrap-out",
        "/etc/istio/proxy/envoy-rev.json",
        "--envoy-bin",
        "envoy",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (key, value) in labels {
        args.push("--label".to_string());
        args.push(format!("{key}={value}"));
    }
    // One Envoy per container: no shared memory for a hot restart that never comes.
    args.extend(["--".to_string(), "--disable-hot-restart".to_string()]);
    let mounts: Vec<Value> = PROXY_MOUNTS
        .iter()
        .map(|(name, path)| json!({"name": name, "mountPath": path}))
        .collect();
    let mut container = json!({
        "name": PROXY_CONTAINER,
        "image": config.proxy_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["capstan"],
        "args": args,
        "env": [
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("INSTANCE_IP", "status.podIP"),
            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            {"name": "CA_ADDR", "value": format!("https://{}", config.discovery_address)},
            {"name": "TRUST_DOMAIN", "value": config.trust_domain},
        ],
        "ports": [
            {"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"},
            {"name": "health", "containerPort": 15021, "protocol": "TCP"},
        ],
        // The agent's bootstrap answers on 15021 once Envoy has its first config (Istio's
        // probe, path and port).
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", "port": 15021},
            "initialDelaySeconds": 1,
            "periodSeconds": 2,
            "failureThreshold": 30,
        },
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "2", "memory": "1Gi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsUser": PROXY_ID,
            "runAsGroup": PROXY_ID,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    });
    if native && let Some(object) = container.as_object_mut() {
        object.insert("restartPolicy".into(), Value::from("Always"));
    }
    container
}

fn volumes() -> Vec<Value> {
    vec![
        json!({"name": "workload-socket", "emptyDir": {}}),
        json!({"name": "credential-socket", "emptyDir": {}}),
        json!({"name": "workload-certs", "emptyDir": {}}),
        json!({"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}),
        json!({"name": "istio-data", "emptyDir": {}}),
        json!({"name": "istio-podinfo", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
        ]}}),
        json!({"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": TOKEN_AUDIENCE,
            "expirationSeconds": 43200,
            "path": "istio-token",
        }}]}}),
        json!({"name": "istiod-ca-cert", "configMap": {"name": ROOT_CERT_CONFIGMAP}}),
    ]
}

/// `items` before the list at `path` (created if absent).
fn prepend(ops: &mut Vec<Value>, path: &str, list: Option<&Vec<Value>>, items: Vec<Value>) {
    if list.is_none() {
        ops.push(json!({"op": "add", "path": path, "value": items}));
        return;
    }
    for (i, item) in items.into_iter().enumerate() {
        ops.push(json!({"op": "add", "path": format!("{path}/{i}"), "value": item}));
    }
}

/// `items` after the list at `path` (created if absent).
fn append(ops: &mut Vec<Value>, path: &str, list: Option<&Vec<Value>>, items: Vec<Value>) {
    if list.is_none() {
        ops.push(json!({"op": "add", "path": path, "value": items}));
        return;
    }
    for item in items {
        ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": item}));
    }
}

/// String entries into the map at `path` (created if absent).
fn add_entries(
    ops: &mut Vec<Value>,
    path: &str,
    map: Option<&Map<String, Value>>,
    entries: Vec<(&str, String)>,
) {
    if entries.is_empty() {
        return;
    }
    if map.is_none() {
        let value: Map<String, Value> = entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::from(v)))
            .collect();
        ops.push(json!({"op": "add", "path": path, "value": value}));
        return;
    }
    for (key, value) in entries {
        let pointer = format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"));
        ops.push(json!({"op": "add", "path": pointer, "value": value}));
    }
}
