//! Sidecar injection and the in-process admission webhooks of `capstan run`, on a real
//! kube-apiserver: capstan (Kubernetes mode, `--webhook-addr`) fills the empty caBundle of
//! both webhook configurations with its CA's roots, the API server then calls it over TLS
//! with the certificate capstan's CA issued, pods created with kubectl come back injected
//! (or untouched, as their labels and namespace say), and an invalid VirtualService is
//! refused. Also: `capstan iptables --dry-run` prints the rules the capture tests install.

use std::time::Duration;

use anyhow::{Context, ensure};
use base64::Engine;
use capstan_e2e::capstan::Capstan;
use capstan_e2e::injection::{
    INJECTION_LABEL, ca_bundle_rbac_yaml, container_names, mutating_config_yaml, pod_yaml,
    validating_config_yaml,
};
use capstan_e2e::kube::{KubeCluster, KubeUser};
use capstan_e2e::{capture, locate, ports, wait_until};
use serde_json::Value;

const VALIDATING: &str = "injection-e2e-validation";
const MUTATING: &str = "injection-e2e-injector";
/// The caBundle is written at capstan's start; the API server then needs its
/// configuration informer to catch up before it calls the webhook with it.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(60);

async fn json(cluster: &KubeCluster, args: &[&str]) -> anyhow::Result<Value> {
    let mut full = args.to_vec();
    full.extend(["-o", "json"]);
    let text = cluster.kubectl(&full).await?;
    serde_json::from_str(&text).with_context(|| format!("kubectl {args:?} printed no JSON"))
}

/// `kubectl create -f -` of `yaml`; the output, or the error with kubectl's stderr.
async fn create(cluster: &KubeCluster, yaml: &str, dry_run: bool) -> anyhow::Result<String> {
    let mut args = vec!["create", "-f", "-"];
    if dry_run {
        args.extend(["--dry-run=server", "-o", "json"]);
    }
    cluster
        .kubectl_output(KubeUser::Admin, &args, Some(yaml))
        .await?
        .into_result()
}

/// The PEM roots in a configuration's webhooks' caBundles (one per webhook).
fn ca_bundles(config: &Value) -> Vec<String> {
    config["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|hook| {
            let encoded = hook["clientConfig"]["caBundle"].as_str().unwrap_or("");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capstan_run_injects_sidecars_and_validates_through_the_api_server() -> anyhow::Result<()> {
    let cluster = KubeCluster::shared().await?;
    let log_dir = locate::fresh_log_dir("injection")?;
    let port = ports::free_port()?;
    cluster
        .kubectl_apply_yaml(&ca_bundle_rbac_yaml(VALIDATING, MUTATING))
        .await?;
    cluster
        .kubectl_apply_yaml(&validating_config_yaml(VALIDATING, port))
        .await?;
    cluster
        .kubectl_apply_yaml(&mutating_config_yaml(MUTATING, port))
        .await?;
    for (kind, name) in [
        ("validatingwebhookconfiguration", VALIDATING),
        ("mutatingwebhookconfiguration", MUTATING),
    ] {
        let config = json(cluster, &["get", kind, name]).await?;
        let bundles = ca_bundles(&config);
        ensure!(
            !bundles.is_empty() && bundles.iter().all(String::is_empty),
            "{name} should start without a caBundle: {bundles:?}"
        );
    }

    let addr = format!("127.0.0.1:{port}");
    let capstan = Capstan::start_kube(
        cluster.capstan_kubeconfig(),
        &[
            "--write-status=false",
            "--webhook-addr",
            &addr,
            "--validating-webhook-config",
            VALIDATING,
            "--mutating-webhook-config",
            MUTATING,
            "--proxy-image",
            "example.invalid/capstan-proxy:e2e",
        ],
        &log_dir,
        "capstan",
    )
    .await?;

    // caBundle: both configurations, every webhook, capstan's root.
    let root = wait_until("capstan to publish its root", WEBHOOK_TIMEOUT, async || {
        let cm = json(
            cluster,
            &[
                "get",
                "configmap",
                "istio-ca-root-cert",
                "-n",
                "istio-system",
            ],
        )
        .await?;
        let root = cm["data"]["root-cert.pem"]
            .as_str()
            .unwrap_or("")
            .to_string();
        ensure!(root.contains("BEGIN CERTIFICATE"), "no root yet: {cm}");
        Ok(root)
    })
    .await
    .with_context(|| format!("logs in {}", log_dir.display()))?;
    for (kind, name, hooks) in [
        ("validatingwebhookconfiguration", VALIDATING, 1),
        ("mutatingwebhookconfiguration", MUTATING, 2),
    ] {
        wait_until(
            &format!("the caBundle of {name}"),
            WEBHOOK_TIMEOUT,
            async || {
                let bundles = ca_bundles(&json(cluster, &["get", kind, name]).await?);
                ensure!(bundles.len() == hooks, "{bundles:?}");
                ensure!(
                    bundles.iter().all(|b| b.trim() == root.trim()),
                    "caBundles {bundles:?} are not the root {root}"
                );
                Ok(())
            },
        )
        .await
        .with_context(|| format!("logs in {}", log_dir.display()))?;
    }

    // Injection in a namespace labelled istio-injection=enabled.
    let enabled = cluster.create_namespace("inject-enabled").await?;
    cluster
        .kubectl(&[
            "label",
            "namespace",
            &enabled,
            &format!("{INJECTION_LABEL}=enabled"),
        ])
        .await?;
    let probe = pod_yaml(&enabled, "probe", &[]);
    wait_until(
        "the API server to call the injector",
        WEBHOOK_TIMEOUT,
        async || {
            let answer: Value = serde_json::from_str(&create(cluster, &probe, true).await?)?;
            ensure!(
                container_names(&answer, "initContainers").contains(&"istio-proxy"),
                "not injected: {answer}"
            );
            Ok(())
        },
    )
    .await
    .with_context(|| format!("logs in {}", log_dir.display()))?;

    create(
        cluster,
        &pod_yaml(&enabled, "web", &[("version", "v1")]),
        false,
    )
    .await?;
    let pod = json(cluster, &["get", "pod", "web", "-n", &enabled]).await?;
    ensure!(
        container_names(&pod, "initContainers") == ["istio-init", "istio-proxy"],
        "{pod}"
    );
    ensure!(container_names(&pod, "containers") == ["app"], "{pod}");
    // interceptionMode NONE (EKS Fargate): the proxy without istio-init.
    let uncaptured = pod_yaml(&enabled, "uncaptured", &[]).replace(
        "  labels:",
        "  annotations: {sidecar.istio.io/interceptionMode: NONE}\n  labels:",
    );
    create(cluster, &uncaptured, false).await?;
    let uncaptured = json(cluster, &["get", "pod", "uncaptured", "-n", &enabled]).await?;
    ensure!(
        container_names(&uncaptured, "initContainers") == ["istio-proxy"]
            && uncaptured["metadata"]["labels"]["security.istio.io/tlsMode"] == "istio",
        "{uncaptured}"
    );
    let proxy = &pod["spec"]["initContainers"][1];
    ensure!(proxy["restartPolicy"] == "Always", "{proxy}");
    ensure!(
        proxy["image"] == "example.invalid/capstan-proxy:e2e",
        "{proxy}"
    );
    ensure!(proxy["args"][0] == "agent", "{proxy}");
    let init = &pod["spec"]["initContainers"][0];
    ensure!(init["args"][0] == "iptables", "{init}");
    let added = &init["securityContext"]["capabilities"]["add"];
    ensure!(
        *added == serde_json::json!(["NET_ADMIN", "NET_RAW"]),
        "{init}"
    );
    let volumes = pod["spec"]["volumes"].as_array().context("no volumes")?;
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name);
    let token = volume("istio-token").context("no istio-token volume")?;
    let source = &token["projected"]["sources"][0]["serviceAccountToken"];
    ensure!(
        source["audience"] == "istio-ca" && source["path"] == "istio-token",
        "{token}"
    );
    let root_volume = volume("istiod-ca-cert").context("no root cert volume")?;
    ensure!(
        root_volume["configMap"]["name"] == "istio-ca-root-cert",
        "{root_volume}"
    );
    for name in ["workload-socket", "credential-socket", "istio-envoy"] {
        ensure!(volume(name).is_some(), "no {name} volume: {volumes:?}");
    }
    let mounts: Vec<&str> = proxy["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            (m["name"] == "istio-token")
                .then(|| m["mountPath"].as_str())
                .flatten()
        })
        .collect();
    ensure!(mounts == ["/var/run/secrets/tokens"], "{proxy}");
    ensure!(
        pod["metadata"]["labels"]["security.istio.io/tlsMode"] == "istio",
        "{pod}"
    );
    ensure!(
        pod["metadata"]["labels"]["service.istio.io/canonical-name"] == "web",
        "{pod}"
    );
    ensure!(
        pod["metadata"]["labels"]["service.istio.io/canonical-revision"] == "v1",
        "{pod}"
    );
    let status = pod["metadata"]["annotations"]["sidecar.istio.io/status"]
        .as_str()
        .context("no sidecar.istio.io/status")?;
    ensure!(status.contains("istio-proxy"), "{status}");

    // A pod that opts out, and one in a namespace without the label: untouched.
    create(
        cluster,
        &pod_yaml(
            &enabled,
            "opted-out",
            &[("sidecar.istio.io/inject", "false")],
        ),
        false,
    )
    .await?;
    let plain = cluster.create_namespace("inject-unlabelled").await?;
    create(cluster, &pod_yaml(&plain, "plain", &[]), false).await?;
    for (namespace, name) in [(&enabled, "opted-out"), (&plain, "plain")] {
        let pod = json(cluster, &["get", "pod", name, "-n", namespace]).await?;
        ensure!(container_names(&pod, "initContainers").is_empty(), "{pod}");
        ensure!(container_names(&pod, "containers") == ["app"], "{pod}");
        ensure!(
            pod["metadata"]["annotations"]["sidecar.istio.io/status"].is_null(),
            "{pod}"
        );
        ensure!(
            pod["metadata"]["labels"]["security.istio.io/tlsMode"].is_null(),
            "{pod}"
        );
    }
    // ... unless the pod asks for it itself (the object selector).
    create(
        cluster,
        &pod_yaml(&plain, "opted-in", &[("sidecar.istio.io/inject", "true")]),
        false,
    )
    .await?;
    let opted_in = json(cluster, &["get", "pod", "opted-in", "-n", &plain]).await?;
    ensure!(
        container_names(&opted_in, "initContainers") == ["istio-init", "istio-proxy"],
        "{opted_in}"
    );

    // The validation webhook, served by the same process: an invalid VirtualService is
    // refused with capstan's message, a valid one admitted.
    let vs = |weights: (u8, u8)| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {plain}}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {}}}
    - {{destination: {{host: reviews, subset: v2}}, weight: {}}}
",
            weights.0, weights.1
        )
    };
    let invalid = vs((80, 10));
    let refusal = wait_until(
        "the API server to call the validator",
        WEBHOOK_TIMEOUT,
        async || {
            let output = cluster
                .kubectl_output(KubeUser::Admin, &["create", "-f", "-"], Some(&invalid))
                .await?;
            let refused = output.into_result().err().map(|e| format!("{e:#}"));
            let message = refused.context("the invalid VirtualService was admitted")?;
            // A webhook the API server cannot call fails with "failed calling webhook" instead.
            ensure!(message.contains("weights must sum to 100"), "{message}");
            Ok(message)
        },
    )
    .await
    .with_context(|| format!("logs in {}", log_dir.display()))?;
    ensure!(
        refusal.contains("spec.http[0].route: weights must sum to 100, got 90"),
        "{refusal}"
    );
    create(cluster, &vs((80, 20)), false).await?;

    drop(capstan);
    Ok(())
}

/// `capstan iptables --dry-run` prints what the real-traffic capture tests install
/// (`capture::nat_rules`), but for their test-only DNAT rule for a host outside the mesh.
#[test]
fn capstan_iptables_prints_the_rules_the_capture_tests_install() -> anyhow::Result<()> {
    let output = std::process::Command::new(locate::capstan_bin()?)
        .args(["iptables", "--dry-run"])
        .output()?;
    ensure!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout)?;
    let defaults = capstan::capture_rules::nat_rules(&Default::default());
    ensure!(
        printed == defaults,
        "printed:\n{printed}\nfunction:\n{defaults}"
    );
    let test_rules: String = capture::nat_rules()
        .lines()
        .filter(|l| !l.contains("-j DNAT"))
        .map(|l| format!("{l}\n"))
        .collect();
    ensure!(
        printed == test_rules,
        "capstan iptables:\n{printed}\ncapture tests:\n{test_rules}"
    );
    Ok(())
}
