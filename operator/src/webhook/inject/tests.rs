//! AdmissionReview round-trips through the injector: each switch, the patch applied to the
//! pod (json-patch), idempotence.

use serde_json::{Map, Value, json};

use super::decision::{Decision, Reason, decide_with_namespace, namespace_selects};
use super::*;

fn config() -> InjectConfig {
    InjectConfig::new(
        &InjectArgs {
            proxy_image: "registry.example/capstan-proxy:1.0".into(),
            proxy_xds_address: None,
            native_sidecars: true,
            revision: "default".into(),
            inject_fail_closed: false,
        },
        "istio-system",
        "cluster.local",
    )
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "reviews-v1-545db77b95-",
            "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "545db77b95"},
        },
        "spec": {
            "serviceAccountName": "bookinfo-reviews",
            "containers": [{"name": "reviews", "image": "example/reviews:v1",
                            "ports": [{"containerPort": 9080}]}],
        }
    })
}

fn review(namespace: &str, operation: &str, object: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b5d1a7c-1111-2222-3333-444455556666",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": operation,
            "object": object,
        }
    }))
    .unwrap_or_default()
}

/// The injector's answer through the serialized AdmissionReview, as the API server sees it.
fn answer(namespace: &str, pod: &Value, config: &InjectConfig) -> InjectResponse {
    let bytes =
        respond(&review(namespace, "CREATE", pod), config).unwrap_or_else(|e| panic!("{e}"));
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(
        answer["response"]["uid"],
        "0b5d1a7c-1111-2222-3333-444455556666"
    );
    decide(&review(namespace, "CREATE", pod), config).unwrap_or_else(|e| panic!("{e}"))
}

fn applied(pod: &Value, response: &InjectResponse) -> Value {
    assert_eq!(response.patch_type.as_deref(), Some("JSONPatch"));
    let operations = response
        .operations()
        .unwrap_or_else(|| panic!("no patch: {response:?}"));
    let patch: Vec<json_patch::PatchOperation> =
        serde_json::from_value(Value::from(operations)).unwrap_or_else(|e| panic!("{e}"));
    let mut pod = pod.clone();
    json_patch::patch(&mut pod, &patch).unwrap_or_else(|e| panic!("patch does not apply: {e}"));
    pod
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect()
}

/// Label pairs of a test case.
type Pairs<'a> = &'a [(&'a str, &'a str)];

fn labels(pairs: Pairs) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect()
}

#[test]
fn a_selected_pod_gets_a_native_sidecar_the_capture_and_its_volumes() {
    let pod = pod();
    let response = answer("bookinfo", &pod, &config());
    assert!(response.allowed);
    assert!(response.warnings.is_empty(), "{:?}", response.warnings);
    let injected = applied(&pod, &response);

    assert_eq!(
        names(&injected["spec"]["initContainers"]),
        ["istio-init", "istio-proxy"]
    );
    assert_eq!(names(&injected["spec"]["containers"]), ["reviews"]);
    let proxy = &injected["spec"]["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["image"], "registry.example/capstan-proxy:1.0");
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    let args: Vec<&str> = proxy["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args[0], "agent");
    let after = |flag: &str| {
        args.iter()
            .position(|a| *a == flag)
            .and_then(|i| args.get(i + 1))
            .copied()
    };
    assert_eq!(
        after("--xds-address"),
        Some("istiod.istio-system.svc:15012")
    );
    assert_eq!(after("--ca-server-name"), Some("istiod.istio-system.svc"));
    assert_eq!(
        after("--token-file"),
        Some("/var/run/secrets/tokens/istio-token")
    );
    assert!(
        args.contains(&"security.istio.io/tlsMode=istio"),
        "{args:?}"
    );
    let env: Vec<(&str, &str)> = proxy["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let from = e["valueFrom"]["fieldRef"]["fieldPath"].as_str();
            (
                e["name"].as_str().unwrap_or(""),
                from.or(e["value"].as_str()).unwrap_or(""),
            )
        })
        .collect();
    for pair in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("INSTANCE_IP", "status.podIP"),
        ("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ("CA_ADDR", "https://istiod.istio-system.svc:15012"),
        ("TRUST_DOMAIN", "cluster.local"),
    ] {
        assert!(env.contains(&pair), "{pair:?} not in {env:?}");
    }

    let init = &injected["spec"]["initContainers"][0];
    assert_eq!(init["args"][0], "iptables");
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );

    let volumes = &injected["spec"]["volumes"];
    let token = volumes
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "istio-token")
        .unwrap_or_else(|| panic!("no token volume: {volumes}"));
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "istio-ca"
    );
    let mounted: Vec<&str> = proxy["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str())
        .collect();
    // Every mount has its volume.
    for name in &mounted {
        assert!(
            names(volumes).contains(name),
            "{name} mounted but not a volume"
        );
    }
    assert!(
        volumes
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v["configMap"]["name"] == "istio-ca-root-cert")
    );

    let labels = &injected["metadata"]["labels"];
    assert_eq!(labels["security.istio.io/tlsMode"], "istio");
    assert_eq!(labels["service.istio.io/canonical-name"], "reviews");
    assert_eq!(labels["service.istio.io/canonical-revision"], "v1");
    let status: Value = serde_json::from_str(
        injected["metadata"]["annotations"]["sidecar.istio.io/status"]
            .as_str()
            .unwrap_or(""),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        status["initContainers"],
        json!(["istio-init", "istio-proxy"])
    );
    assert_eq!(status["revision"], "default");
    assert_eq!(
        injected["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "reviews"
    );
}

#[test]
fn injecting_twice_changes_nothing() {
    let pod = pod();
    let injected = applied(&pod, &answer("bookinfo", &pod, &config()));
    let again = answer("bookinfo", &injected, &config());
    assert!(again.allowed);
    assert_eq!(again.patch, None);
    // Istio's own injection is recognised by its container alone.
    let mut istio_injected = pod.clone();
    istio_injected["spec"]["containers"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("containers"))
        .push(json!({"name": "istio-proxy", "image": "istio/proxyv2"}));
    assert_eq!(answer("bookinfo", &istio_injected, &config()).patch, None);
}

#[test]
fn a_regular_sidecar_when_native_ones_are_off() {
    let mut config = config();
    config.native_sidecars = false;
    let mut pod = pod();
    pod["spec"]["initContainers"] = json!([{"name": "migrate", "image": "example/migrate"}]);
    pod["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let injected = applied(&pod, &answer("bookinfo", &pod, &config));
    assert_eq!(
        names(&injected["spec"]["initContainers"]),
        ["istio-init", "migrate"]
    );
    assert_eq!(
        names(&injected["spec"]["containers"]),
        ["reviews", "istio-proxy"]
    );
    assert_eq!(injected["spec"]["containers"][1].get("restartPolicy"), None);
    assert_eq!(names(&injected["spec"]["volumes"])[0], "data");

    // The pod's annotation wins over the flag.
    pod["metadata"]["annotations"] = json!({"sidecar.istio.io/nativeSidecar": "true"});
    let injected = applied(&pod, &answer("bookinfo", &pod, &config));
    assert_eq!(
        names(&injected["spec"]["initContainers"]),
        ["istio-init", "istio-proxy", "migrate"]
    );
}

/// `sidecar.istio.io/interceptionMode: NONE`, as on EKS Fargate: no `istio-init` (the pod
/// may not change its iptables), the proxy alone; another mode than REDIRECT is warned.
#[test]
fn interception_mode_none_injects_the_proxy_without_the_capture() {
    let mut pod = pod();
    pod["metadata"]["annotations"] = json!({"sidecar.istio.io/interceptionMode": "NONE"});
    let response = answer("bookinfo", &pod, &config());
    assert!(response.warnings.is_empty(), "{:?}", response.warnings);
    let injected = applied(&pod, &response);
    assert_eq!(names(&injected["spec"]["initContainers"]), ["istio-proxy"]);
    // Labelled as any pod with a sidecar: the mesh calls it over mutual TLS, which its
    // Sidecar's bound ingress listeners take.
    assert_eq!(
        injected["metadata"]["labels"]["security.istio.io/tlsMode"],
        "istio"
    );
    let status: Value = serde_json::from_str(
        injected["metadata"]["annotations"]["sidecar.istio.io/status"]
            .as_str()
            .unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status["initContainers"], json!(["istio-proxy"]));

    let mut config = config();
    config.native_sidecars = false;
    let injected = applied(&pod, &answer("bookinfo", &pod, &config));
    assert_eq!(injected["spec"].get("initContainers"), None);
    assert_eq!(
        names(&injected["spec"]["containers"]),
        ["reviews", "istio-proxy"]
    );

    pod["metadata"]["annotations"] = json!({"sidecar.istio.io/interceptionMode": "TPROXY"});
    let response = answer("bookinfo", &pod, &config);
    assert_eq!(response.warnings.len(), 1, "{:?}", response.warnings);
    assert!(
        response.warnings[0].contains("TPROXY"),
        "{:?}",
        response.warnings
    );
    let injected = applied(&pod, &response);
    assert_eq!(names(&injected["spec"]["initContainers"]), ["istio-init"]);
}

#[test]
fn the_pod_label_and_annotation_switch_injection_off() {
    for (label, annotation, injected) in [
        (Some("false"), None, false),
        (None, Some("false"), false),
        (None, Some("no"), false),
        (Some("true"), None, true),
        (None, Some("y"), true),
        // The label wins over the annotation, as in Istio.
        (Some("true"), Some("false"), true),
        (Some("false"), Some("true"), false),
    ] {
        let mut pod = pod();
        if let Some(value) = label {
            pod["metadata"]["labels"]["sidecar.istio.io/inject"] = json!(value);
        }
        if let Some(value) = annotation {
            pod["metadata"]["annotations"] = json!({"sidecar.istio.io/inject": value});
        }
        let response = answer("bookinfo", &pod, &config());
        assert!(response.allowed);
        assert_eq!(
            response.patch.is_some(),
            injected,
            "label {label:?} annotation {annotation:?}"
        );
    }
}

#[test]
fn host_network_pods_and_system_namespaces_are_never_injected() {
    let mut host = pod();
    host["spec"]["hostNetwork"] = json!(true);
    host["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("true");
    assert_eq!(answer("bookinfo", &host, &config()).patch, None);
    for namespace in ["kube-system", "kube-public"] {
        let mut pod = pod();
        pod["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("true");
        let response = answer(namespace, &pod, &config());
        assert!(response.allowed);
        assert_eq!(response.patch, None, "{namespace}");
    }
}

#[test]
fn namespace_labels_select_as_the_webhook_configuration_does() {
    let pod = pod();
    let cases: [(Pairs, Pairs, Decision); 9] = [
        (&[("istio-injection", "enabled")], &[], Decision::Inject),
        (
            &[("istio-injection", "enabled")],
            &[("sidecar.istio.io/inject", "false")],
            Decision::Skip(Reason::OptedOut),
        ),
        // `disabled` wins over the pod.
        (
            &[("istio-injection", "disabled")],
            &[("sidecar.istio.io/inject", "true")],
            Decision::Skip(Reason::NotSelected),
        ),
        // istio-injection wins over istio.io/rev.
        (
            &[("istio-injection", "enabled"), ("istio.io/rev", "canary")],
            &[],
            Decision::Inject,
        ),
        (&[("istio.io/rev", "default")], &[], Decision::Inject),
        (
            &[("istio.io/rev", "canary")],
            &[],
            Decision::Skip(Reason::NotSelected),
        ),
        (&[], &[], Decision::Skip(Reason::NotSelected)),
        (
            &[],
            &[("sidecar.istio.io/inject", "true")],
            Decision::Inject,
        ),
        (&[], &[("istio.io/rev", "default")], Decision::Inject),
    ];
    for (ns_labels, pod_labels, expected) in cases {
        let mut pod = pod.clone();
        for (k, v) in pod_labels {
            pod["metadata"]["labels"][*k] = json!(v);
        }
        let decision = decide_with_namespace(&pod, "bookinfo", &labels(ns_labels), "default");
        assert_eq!(
            decision, expected,
            "namespace {ns_labels:?}, pod {pod_labels:?}"
        );
        // What reaches the webhook is what the selectors let through, and is injected.
        let selected = namespace_selects(&labels(ns_labels), &labels(pod_labels), "default");
        if selected {
            assert!(answer("bookinfo", &pod, &config()).patch.is_some());
        }
    }
    // The annotation opts a pod in where the namespace has no say.
    let mut annotated = pod.clone();
    annotated["metadata"]["annotations"] = json!({"sidecar.istio.io/inject": "true"});
    assert_eq!(
        decide_with_namespace(&annotated, "bookinfo", &Map::new(), "default"),
        Decision::Inject
    );
}

#[test]
fn capture_annotations_reach_the_init_container() {
    let mut pod = pod();
    pod["metadata"]["annotations"] = json!({
        "traffic.sidecar.istio.io/includeOutboundIPRanges": "10.96.0.0/12",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.96.0.10/32",
        "traffic.sidecar.istio.io/includeInboundPorts": "9080",
        "traffic.sidecar.istio.io/excludeInboundPorts": "8443, 15021",
        "traffic.sidecar.istio.io/excludeOutboundPorts": "5432",
        "sidecar.istio.io/proxyCPU": "500m",
    });
    let response = answer("bookinfo", &pod, &config());
    assert_eq!(
        response.warnings,
        [
            "capstan's sidecar injector does not honour annotation sidecar.istio.io/proxyCPU; it is ignored"
        ]
    );
    let injected = applied(&pod, &response);
    let args = &injected["spec"]["initContainers"][0]["args"];
    assert_eq!(
        args,
        &json!([
            "iptables",
            "--outbound-port",
            "15001",
            "--inbound-port",
            "15006",
            "--proxy-uid",
            "1337",
            "--proxy-gid",
            "1337",
            "--include-outbound-ip-ranges",
            "10.96.0.0/12",
            "--exclude-outbound-ip-ranges",
            "10.96.0.10/32",
            "--include-inbound-ports",
            "9080",
            "--exclude-inbound-ports",
            "15090,15021,15020,8443",
            "--exclude-outbound-ports",
            "5432",
        ])
    );
    // The arguments are ones `capstan iptables` accepts.
    let parsed: Vec<String> = args
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }
    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        Iptables(crate::capture_rules::IptablesArgs),
    }
    use clap::Parser;
    let cli = Cli::try_parse_from(std::iter::once("capstan".to_string()).chain(parsed))
        .unwrap_or_else(|e| panic!("{e}"));
    let Sub::Iptables(flags) = cli.command;
    let capture = flags.config().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(capture.include_inbound_ports, Some(vec![9080]));
}

#[test]
fn an_unparsable_capture_annotation_refuses_the_pod() {
    let mut pod = pod();
    pod["metadata"]["name"] = json!("web");
    pod["metadata"]["annotations"] =
        json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "5432,postgres"});
    let response = answer("bookinfo", &pod, &config());
    assert!(!response.allowed);
    let message = response.status.unwrap_or_default()["message"].clone();
    assert_eq!(
        message,
        "sidecar injection of pod bookinfo/web: annotation traffic.sidecar.istio.io/excludeOutboundPorts: \"postgres\" is not a port (1-65535)"
    );
}

#[test]
fn internal_failures_admit_the_pod_unless_fail_closed() {
    let mut broken = pod();
    broken["spec"]["containers"] = json!("not a list");
    let response = answer("bookinfo", &broken, &config());
    assert!(response.allowed);
    assert_eq!(response.patch, None);
    assert_eq!(response.warnings.len(), 1);
    let mut closed = config();
    closed.fail_closed = true;
    let response = answer("bookinfo", &broken, &closed);
    assert!(!response.allowed);
    assert_eq!(response.status.unwrap_or_default()["code"], 500);
}

#[test]
fn updates_and_other_kinds_pass_untouched() {
    let pod = pod();
    let update =
        decide(&review("bookinfo", "UPDATE", &pod), &config()).unwrap_or_else(|e| panic!("{e}"));
    assert!(update.allowed);
    assert_eq!(update.patch, None);
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}});
    assert_eq!(answer("bookinfo", &service, &config()).patch, None);
    assert!(matches!(decide(b"{", &config()), Err(ReviewError::Json(_))));
}

#[test]
fn labels_and_annotations_with_slashes_are_escaped_in_the_patch() {
    let mut pod = pod();
    pod["metadata"]["annotations"] = json!({"example.com/owner": "team-a"});
    pod["metadata"]["labels"] =
        json!({"app.kubernetes.io/name": "web", "app.kubernetes.io/version": "2"});
    let injected = applied(&pod, &answer("bookinfo", &pod, &config()));
    assert_eq!(
        injected["metadata"]["labels"]["service.istio.io/canonical-name"],
        "web"
    );
    assert_eq!(
        injected["metadata"]["labels"]["service.istio.io/canonical-revision"],
        "2"
    );
    assert_eq!(
        injected["metadata"]["annotations"]["example.com/owner"],
        "team-a"
    );
    // No labels at all: the workload name comes from the ReplicaSet's generated name.
    let mut bare = super::tests::pod();
    bare["metadata"] = json!({"generateName": "ratings-v1-7dc98c7588-"});
    let injected = applied(&bare, &answer("bookinfo", &bare, &config()));
    assert_eq!(
        injected["metadata"]["labels"]["service.istio.io/canonical-name"],
        "ratings-v1-7dc98c7588"
    );
    assert_eq!(
        injected["metadata"]["labels"]["service.istio.io/canonical-revision"],
        "latest"
    );
}

#[test]
fn the_discovery_host_is_the_address_without_its_port() {
    let mut config = config();
    assert_eq!(config.discovery_host(), "istiod.istio-system.svc");
    config.discovery_address = "capstan.mesh.svc:15012".into();
    assert_eq!(config.discovery_host(), "capstan.mesh.svc");
    config.discovery_address = "[fd00::1]:15012".into();
    assert_eq!(config.discovery_host(), "fd00::1");
}
