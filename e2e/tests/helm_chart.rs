//! The Helm charts (`charts/capstan`, `charts/capstan-gateway`) with the real helm 3 and 4
//! binaries (`scripts/helm.sh`) and a real kube-apiserver:
//! - lint and template of every values file, asserting on the rendered objects; the values
//!   schema refuses a misspelt key by name; the chart's CRDs and RBAC equal `crds/generated` and
//!   `charts/manifests/rbac.yaml`; every flag the templates pass exists in `capstan run|agent`;
//! - the CRDs applied alone accept one object of each kind;
//! - `helm install` into the apiserver: the objects are created, the RBAC judged by the
//!   apiserver (`kubectl auth can-i` as the chart's ServiceAccount), both webhook configurations
//!   registered and matching what Istio's would (the apiserver calls them for the namespaces and
//!   pods they select, and only those), and capstan, run with a token of the chart's
//!   ServiceAccount, serves a real Envoy a Service of the cluster.
//!
//! No pod of the chart runs (no kubelet); capstan runs as a process outside the "cluster".
//! The binary runs in its own network namespace (the Kubernetes harness needs it).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, ensure};
use capstan::source::cloud_map::config::NamespaceRef;
use capstan::source::cloud_map::{CloudMapConfig, Mode};
use capstan_e2e::capstan::Capstan;
use capstan_e2e::cloudmap::{CloudMap, ServiceHealth};
use capstan_e2e::envoy::{AdsMode, Bootstrap, Envoy};
use capstan_e2e::helm::{self, Helm, HelmVersion, chart_dir, count, find};
use capstan_e2e::kube::{KubeCluster, KubeUser, pki};
use capstan_e2e::kube_mesh::{TestPod, cloud_map_role_yaml, endpoint_slice_yaml, service_yaml};
use capstan_e2e::locate;
use capstan_e2e::mesh::{CONFIG_TIMEOUT, OUTBOUND_LISTENER};
use capstan_e2e::moto::{Moto, MotoFaults};
use capstan_e2e::wait_until;
use serde_json::Value;

capstan_e2e::private_network!();

const VALUES_FILES: [&str; 4] = [
    "values.yaml",
    "values-dev.yaml",
    "values-staging.yaml",
    "values-prod.yaml",
];

fn values_path(file: &str) -> String {
    chart_dir("capstan").join(file).display().to_string()
}

async fn render(helm: &Helm, extra: &[&str]) -> anyhow::Result<Vec<Value>> {
    helm.template(&chart_dir("capstan"), "capstan", "istio-system", extra)
        .await
}

async fn render_with(helm: &Helm, values_file: &str) -> anyhow::Result<Vec<Value>> {
    render(helm, &["-f", &values_path(values_file)]).await
}

fn container(deployment: &Value) -> anyhow::Result<&Value> {
    deployment
        .pointer("/spec/template/spec/containers/0")
        .context("the Deployment has no container")
}

fn deployment_args(deployment: &Value) -> anyhow::Result<Vec<String>> {
    Ok(container(deployment)?["args"]
        .as_array()
        .context("the container has no args")?
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect())
}

fn env(deployment: &Value, name: &str) -> Option<String> {
    container(deployment).ok()?["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
        .map(str::to_string)
}

/// `(port, targetPort)` of a Service.
fn service_ports(service: &Value) -> BTreeSet<(u64, u64)> {
    service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["port"].as_u64()?, p["targetPort"].as_u64()?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charts_lint_with_helm_3_and_4_for_every_values_file() -> anyhow::Result<()> {
    for version in [HelmVersion::V3, HelmVersion::V4] {
        let helm = Helm::new(version)?;
        for file in VALUES_FILES {
            let chart = chart_dir("capstan").display().to_string();
            helm.run(&["lint", "--strict", &chart, "-f", &values_path(file)])
                .await
                .with_context(|| format!("{version:?}, {file}"))?;
        }
        // Cloud Map on, materialised, with the mesh namespace created: every key of its schema.
        let chart = chart_dir("capstan").display().to_string();
        helm.run(&[
            "lint",
            "--strict",
            &chart,
            "--set",
            "cloudMap.enabled=true,cloudMap.createMeshNamespace=true,\
             cloudMap.config.mode=materialize,cloudMap.config.namespaces[0].name=example.local,\
             cloudMap.config.namespaces[1].id=ns-1,\
             cloudMap.config.services[0].namespace=example.local,\
             cloudMap.config.services[0].name=orders,\
             cloudMap.config.services[0].ports[0].name=http,\
             cloudMap.config.services[0].ports[0].number=80",
            // `--set` would make 0.2 a string, which the schema refuses (capstan would too).
            "--set-json",
            "cloudMap.config.jitter=0.2",
        ])
        .await
        .with_context(|| format!("{version:?}, Cloud Map"))?;
        let gateway = chart_dir("capstan-gateway").display().to_string();
        helm.run(&["lint", "--strict", &gateway])
            .await
            .with_context(|| format!("{version:?}, capstan-gateway"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_values_render_capstan_with_istios_webhooks() -> anyhow::Result<()> {
    let helm = Helm::new(HelmVersion::V3)?;
    let objects = render_with(&helm, "values.yaml").await?;

    let deployment = find(&objects, "Deployment", "capstan")?;
    ensure!(deployment["spec"]["replicas"] == 1, "{deployment}");
    let args = deployment_args(deployment)?;
    for expected in [
        "run",
        "--in-cluster",
        "--mesh-config=/etc/istio/config/mesh",
        "--xds-tls-addr=0.0.0.0:15012",
        "--monitoring-addr=0.0.0.0:15014",
        "--webhook-addr=0.0.0.0:15017",
        "--webhook-service=capstan",
        "--validating-webhook-config=capstan-validation",
        "--mutating-webhook-config=capstan-sidecar-injector",
        "--proxy-image=capstan-proxy:0.1.0",
        "--proxy-xds-address=istiod.istio-system.svc:15012",
        "--xds-tls-dns-names=capstan.istio-system.svc,istiod.istio-system.svc",
        "--max-workload-cert-ttl-secs=7776000",
        // Injected pods are captured by iptables (istio-init): Istio's listeners.
        "--sidecar-listeners=capture",
    ] {
        ensure!(
            args.iter().any(|a| a == expected),
            "{expected} not in {args:?}"
        );
    }
    // Plaintext xDS only when asked for (values-dev.yaml).
    ensure!(
        !args.iter().any(|a| a.starts_with("--xds-addr")),
        "{args:?}"
    );
    let c = container(deployment)?;
    ensure!(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "{c}");
    ensure!(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "{c}");
    for probe in ["readinessProbe", "livenessProbe"] {
        ensure!(c[probe]["httpGet"]["port"] == 15014, "{probe}: {c}");
    }
    ensure!(
        c["securityContext"]["readOnlyRootFilesystem"] == true,
        "{c}"
    );
    let mounts = c["volumeMounts"].as_array().context("no volumeMounts")?;
    ensure!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/etc/istio/config" && m["name"] == "mesh-config"),
        "{mounts:?}"
    );
    ensure!(
        deployment
            .pointer("/spec/template/spec/securityContext/runAsUser")
            .is_some_and(|u| u == 65532),
        "{deployment}"
    );

    let mesh = find(&objects, "ConfigMap", "istio")?["data"]["mesh"]
        .as_str()
        .context("ConfigMap istio has no key mesh")?;
    for line in [
        "rootNamespace: istio-system",
        "trustDomain: cluster.local",
        "mode: ALLOW_ANY",
    ] {
        ensure!(
            mesh.contains(line),
            "{line:?} not in the mesh config:\n{mesh}"
        );
    }

    for name in ["capstan", "istiod"] {
        let service = find(&objects, "Service", name)?;
        let ports = service_ports(service);
        let want: BTreeSet<(u64, u64)> = [(15012, 15012), (443, 15017), (15014, 15014)].into();
        ensure!(ports == want, "Service {name}: {ports:?}");
    }
    ensure!(count(&objects, "PodDisruptionBudget") == 0);
    ensure!(count(&objects, "HorizontalPodAutoscaler") == 0);
    ensure!(count(&objects, "ServiceMonitor") == 0);

    let validating = find(
        &objects,
        "ValidatingWebhookConfiguration",
        "capstan-validation",
    )?;
    let hook = &validating["webhooks"][0];
    ensure!(
        hook["clientConfig"]["service"]["path"] == "/validate",
        "{hook}"
    );
    ensure!(
        hook["clientConfig"]["service"]["name"] == "capstan",
        "{hook}"
    );
    ensure!(hook["clientConfig"]["service"]["port"] == 443, "{hook}");
    ensure!(hook["clientConfig"].get("caBundle").is_none(), "{hook}");
    ensure!(hook["failurePolicy"] == "Fail", "{hook}");
    let resources: usize = hook["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["resources"].as_array().map_or(0, Vec::len))
        .sum();
    ensure!(resources == 10, "the ten Istio kinds: {hook}");

    let mutating = find(
        &objects,
        "MutatingWebhookConfiguration",
        "capstan-sidecar-injector",
    )?;
    let hooks = mutating["webhooks"].as_array().context("no webhooks")?;
    ensure!(hooks.len() == 2, "{hooks:?}");
    for hook in hooks {
        ensure!(
            hook["clientConfig"]["service"]["path"] == "/inject",
            "{hook}"
        );
        ensure!(hook["clientConfig"].get("caBundle").is_none(), "{hook}");
        ensure!(hook["failurePolicy"] == "Fail", "{hook}");
        ensure!(hook["reinvocationPolicy"] == "Never", "{hook}");
        ensure!(hook["sideEffects"] == "None", "{hook}");
        ensure!(hook["admissionReviewVersions"] == serde_json::json!(["v1"]));
        ensure!(
            hook["objectSelector"]["matchExpressions"]
                == serde_json::json!([{"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]),
            "{hook}"
        );
    }
    let selectors: Vec<&Value> = hooks
        .iter()
        .map(|h| &h["namespaceSelector"]["matchExpressions"])
        .collect();
    ensure!(
        selectors.contains(&&serde_json::json!([{"key": "istio-injection", "operator": "In", "values": ["enabled"]}])),
        "{selectors:?}"
    );
    ensure!(
        selectors.contains(&&serde_json::json!([
            {"key": "istio.io/rev", "operator": "In", "values": ["default"]},
            {"key": "istio-injection", "operator": "DoesNotExist"}
        ])),
        "{selectors:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_values_files_render_what_they_promise() -> anyhow::Result<()> {
    let helm = Helm::new(HelmVersion::V3)?;

    let prod = render_with(&helm, "values-prod.yaml").await?;
    let deployment = find(&prod, "Deployment", "capstan")?;
    ensure!(deployment["spec"]["replicas"] == 3, "{deployment}");
    let pdb = find(&prod, "PodDisruptionBudget", "capstan")?;
    ensure!(pdb["spec"]["minAvailable"] == 1, "{pdb}");
    ensure!(
        pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"],
        "the PDB selects the Deployment's pods: {pdb}"
    );
    let resources = &container(deployment)?["resources"];
    for field in ["/requests/cpu", "/requests/memory", "/limits/memory"] {
        ensure!(resources.pointer(field).is_some(), "{field}: {resources}");
    }
    ensure!(env(deployment, "CAPSTAN_LOG").as_deref() == Some("warn"));
    let spread = deployment
        .pointer("/spec/template/spec/topologySpreadConstraints")
        .and_then(Value::as_array)
        .context("no topologySpreadConstraints")?;
    let zone = spread
        .iter()
        .find(|c| c["topologyKey"] == "topology.kubernetes.io/zone")
        .context("no spread across zones")?;
    ensure!(zone["whenUnsatisfiable"] == "DoNotSchedule", "{zone}");
    ensure!(
        zone["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"],
        "{zone}"
    );

    let staging = render_with(&helm, "values-staging.yaml").await?;
    ensure!(find(&staging, "Deployment", "capstan")?["spec"]["replicas"] == 2);
    find(&staging, "PodDisruptionBudget", "capstan")?;

    let dev = render_with(&helm, "values-dev.yaml").await?;
    let deployment = find(&dev, "Deployment", "capstan")?;
    let args = deployment_args(deployment)?;
    ensure!(
        args.iter().any(|a| a == "--xds-addr=0.0.0.0:15010")
            && args.iter().any(|a| a == "--xds-plaintext-insecure"),
        "{args:?}"
    );
    ensure!(service_ports(find(&dev, "Service", "capstan")?).contains(&(15010, 15010)));
    let hook = &find(
        &dev,
        "MutatingWebhookConfiguration",
        "capstan-sidecar-injector",
    )?["webhooks"][0];
    ensure!(hook["failurePolicy"] == "Ignore", "{hook}");

    // Autoscaling: an HPA, and the Deployment leaves replicas to it.
    let hpa = render(&helm, &["--set", "autoscaling.enabled=true"]).await?;
    let autoscaler = find(&hpa, "HorizontalPodAutoscaler", "capstan")?;
    ensure!(autoscaler["spec"]["scaleTargetRef"]["name"] == "capstan");
    ensure!(
        find(&hpa, "Deployment", "capstan")?["spec"]
            .get("replicas")
            .is_none()
    );

    // EKS: IRSA on the ServiceAccount, AWS Private CA flags.
    let role = "arn:aws:iam::123456789012:role/capstan-pca";
    let pca = "arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/0a1b2c3d";
    let eks = render(
        &helm,
        &[
            "--set-string",
            &format!("serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn={role}"),
            "--set",
            &format!("ca.pca.arn={pca}"),
            "--set",
            "ca.pca.signingAlgorithm=SHA256WITHECDSA",
            "--set",
            "serviceMonitor.enabled=true",
        ],
    )
    .await?;
    let sa = find(&eks, "ServiceAccount", "capstan")?;
    ensure!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role,
        "{sa}"
    );
    let args = deployment_args(find(&eks, "Deployment", "capstan")?)?;
    for expected in [
        format!("--ca-pca-arn={pca}"),
        "--ca-pca-signing-algorithm=SHA256WITHECDSA".to_string(),
        "--ca-pca-validity-secs=2592000".to_string(),
    ] {
        ensure!(args.contains(&expected), "{expected} not in {args:?}");
    }
    let monitor = find(&eks, "ServiceMonitor", "capstan")?;
    ensure!(
        monitor["spec"]["endpoints"][0]["port"] == "http-monitoring",
        "{monitor}"
    );

    // A revision: its own names, and only namespaces labelled istio.io/rev=<revision>.
    let canary = render(&helm, &["--set", "revision=canary"]).await?;
    find(&canary, "Deployment", "capstan-canary")?;
    find(&canary, "ConfigMap", "istio-canary")?;
    find(
        &canary,
        "ValidatingWebhookConfiguration",
        "capstan-validation-canary",
    )?;
    let hooks = find(
        &canary,
        "MutatingWebhookConfiguration",
        "capstan-sidecar-injector-canary",
    )?["webhooks"]
        .as_array()
        .context("no webhooks")?;
    ensure!(hooks.len() == 1, "{hooks:?}");
    ensure!(
        hooks[0]["namespaceSelector"]["matchExpressions"][0]
            == serde_json::json!({"key": "istio.io/rev", "operator": "In", "values": ["canary"]}),
        "{hooks:?}"
    );
    Ok(())
}

/// A misspelt key fails `helm template`, `helm lint` and `helm install` (they share the
/// schema check) with the key's name, at the top level, nested, and in a values file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_values_schema_refuses_a_typo_naming_it() -> anyhow::Result<()> {
    let helm = Helm::new(HelmVersion::V3)?;
    let chart = chart_dir("capstan").display().to_string();
    for (set, field) in [
        ("replicaCont=3", "replicaCont"),
        ("webhooks.injection.failurPolicy=Fail", "failurPolicy"),
        ("ca.pca.arm=arn:aws:acm-pca:x", "arm"),
    ] {
        let out = helm
            .output(&["template", "capstan", &chart, "--set", set])
            .await?;
        ensure!(!out.success, "{set} was accepted");
        ensure!(
            out.stderr
                .contains(&format!("Additional property {field} is not allowed")),
            "{set}: {}",
            out.stderr
        );
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("typo.yaml");
    std::fs::write(&file, "podDisruptionBudget:\n  enabeld: true\n")?;
    let out = helm
        .output(&["lint", &chart, "-f", &file.display().to_string()])
        .await?;
    ensure!(!out.success, "lint passed a typo");
    let text = format!("{}{}", out.stdout, out.stderr);
    ensure!(text.contains("enabeld"), "{text}");

    // Values that are spelt right but wrong: a failure policy Kubernetes does not know, Cloud
    // Map enabled without a namespace to serve, a mode capstan does not have, a namespace
    // given by both name and id, and a misspelt key of the Cloud Map config file (capstan
    // refuses unknown keys too, but only once the pod starts).
    for (set, needle) in [
        ("webhooks.injection.failurePolicy=Maybe", "failurePolicy"),
        ("cloudMap.enabled=true", "cloudMap.config.namespaces"),
        ("cloudMap.config.mode=materialise", "cloudMap.config.mode"),
        (
            "cloudMap.config.namespaces[0].name=a,cloudMap.config.namespaces[0].id=b",
            "cloudMap.config.namespaces.0",
        ),
        (
            "cloudMap.config.intervall=10s",
            "Additional property intervall is not allowed",
        ),
    ] {
        let out = helm
            .output(&["template", "capstan", &chart, "--set", set])
            .await?;
        ensure!(!out.success, "{set} was accepted");
        ensure!(out.stderr.contains(needle), "{set}: {}", out.stderr);
    }
    let gateway = chart_dir("capstan-gateway").display().to_string();
    let out = helm
        .output(&["template", "gw", &gateway, "--set", "servce.type=NodePort"])
        .await?;
    ensure!(
        !out.success && out.stderr.contains("servce"),
        "{}",
        out.stderr
    );
    Ok(())
}

/// The Kubernetes tests run under charts/manifests/rbac.yaml; the chart must grant exactly
/// that, plus the webhook configurations' caBundle and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_equals_the_tested_manifest() -> anyhow::Result<()> {
    let helm = Helm::new(HelmVersion::V3)?;
    let rendered = render_with(&helm, "values.yaml").await?;
    let manifest_path = locate::repo_dir().join("charts/manifests/rbac.yaml");
    let manifest = helm::yaml_objects(&std::fs::read_to_string(&manifest_path)?).await?;

    let chart_role = find(&rendered, "ClusterRole", "capstan-istio-system")?;
    let manifest_role = find(&manifest, "ClusterRole", "capstan")?;
    ensure!(
        chart_role["rules"] == manifest_role["rules"],
        "ClusterRole rules differ:\nchart: {}\nmanifest: {}",
        chart_role["rules"],
        manifest_role["rules"]
    );
    let chart_role = find(&rendered, "Role", "capstan")?;
    let manifest_role = find(&manifest, "Role", "capstan")?;
    ensure!(
        chart_role["rules"] == manifest_role["rules"],
        "Role rules differ:\nchart: {}\nmanifest: {}",
        chart_role["rules"],
        manifest_role["rules"]
    );
    let webhooks = find(&rendered, "ClusterRole", "capstan-istio-system-webhooks")?;
    ensure!(
        webhooks["rules"]
            == serde_json::json!([
                {"apiGroups": ["admissionregistration.k8s.io"],
                 "resources": ["validatingwebhookconfigurations"],
                 "resourceNames": ["capstan-validation"], "verbs": ["get", "patch"]},
                {"apiGroups": ["admissionregistration.k8s.io"],
                 "resources": ["mutatingwebhookconfigurations"],
                 "resourceNames": ["capstan-sidecar-injector"], "verbs": ["get", "patch"]},
            ]),
        "{}",
        webhooks["rules"]
    );
    ensure!(count(&rendered, "ClusterRole") == 2 && count(&rendered, "Role") == 1);
    Ok(())
}

/// helm installs crds/ but never upgrades them, so the chart carries a copy of
/// crds/generated; `make crds` refreshes both. A stale copy fails here.
#[test]
fn chart_crds_equal_crds_generated() -> anyhow::Result<()> {
    let generated = locate::repo_dir().join("crds/generated");
    let chart = chart_dir("capstan").join("crds");
    let names = |dir: &Path| -> anyhow::Result<BTreeSet<String>> {
        let mut names = BTreeSet::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            // all.yaml repeats the per-kind files; helm would create each CRD twice.
            if name != "all.yaml" {
                names.insert(name);
            }
        }
        Ok(names)
    };
    let (want, have) = (names(&generated)?, names(&chart)?);
    ensure!(
        want == have,
        "charts/capstan/crds has {have:?}, crds/generated {want:?}: run `make crds`"
    );
    ensure!(want.len() == 10, "{want:?}");
    for name in &want {
        let a = std::fs::read(generated.join(name))?;
        let b = std::fs::read(chart.join(name))?;
        ensure!(
            a == b,
            "charts/capstan/crds/{name} differs from crds/generated: run `make crds`"
        );
    }
    Ok(())
}

/// Every flag the templates pass exists in the binary they run (the proxy image's entrypoint
/// is `capstan agent`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_pass_only_flags_capstan_has() -> anyhow::Result<()> {
    let helm = Helm::new(HelmVersion::V3)?;
    let capstan = locate::capstan_bin()?;
    let flags_of = |sub: &str| -> anyhow::Result<BTreeSet<String>> {
        let out = std::process::Command::new(&capstan)
            .args([sub, "--help"])
            .output()?;
        ensure!(out.status.success(), "capstan {sub} --help failed");
        Ok(String::from_utf8_lossy(&out.stdout)
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| w.split(['=', '[', '<']).next().unwrap_or(w).to_string())
            .collect())
    };
    let run_flags = flags_of("run")?;
    let agent_flags = flags_of("agent")?;
    ensure!(run_flags.contains("--in-cluster") && agent_flags.contains("--proxy-type"));

    let pca = "ca.pca.arn=arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/x";
    let mut rendered = Vec::new();
    for file in VALUES_FILES {
        rendered.extend(render_with(&helm, file).await?);
    }
    rendered.extend(render(&helm, &["--set", pca, "--set", "ca.pca.region=eu-west-1"]).await?);
    rendered.extend(
        render(
            &helm,
            &[
                "--set",
                "cloudMap.enabled=true,cloudMap.config.namespaces[0].name=example.local",
            ],
        )
        .await?,
    );
    let mut checked = 0;
    for deployment in rendered.iter().filter(|o| o["kind"] == "Deployment") {
        for arg in deployment_args(deployment)? {
            let flag = arg.split('=').next().unwrap_or(&arg);
            if !flag.starts_with("--") {
                continue;
            }
            checked += 1;
            ensure!(
                run_flags.contains(flag),
                "the chart passes {arg:?}, which `capstan run` does not have"
            );
        }
    }
    ensure!(checked > 40, "only {checked} flags checked");

    let gateway = helm
        .template(&chart_dir("capstan-gateway"), "gw", "istio-ingress", &[])
        .await?;
    let deployment = find(&gateway, "Deployment", "gw")?;
    let args = deployment_args(deployment)?;
    // Flags before `--` are the agent's; after it, Envoy's.
    for arg in args.iter().take_while(|a| a.as_str() != "--") {
        let flag = arg.split('=').next().unwrap_or(arg);
        ensure!(
            agent_flags.contains(flag),
            "the gateway chart passes {arg:?}, which `capstan agent` does not have"
        );
    }
    ensure!(args.iter().any(|a| a == "--proxy-type=router"), "{args:?}");
    ensure!(
        args.iter().any(|a| a == "--label=istio=ingressgateway"),
        "{args:?}"
    );
    let token = deployment
        .pointer("/spec/template/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|v| v.pointer("/projected/sources/0/serviceAccountToken"))
        .context("no projected ServiceAccount token")?;
    ensure!(token["audience"] == "istio-ca", "{token}");
    let service = find(&gateway, "Service", "gw")?;
    ensure!(service["spec"]["type"] == "LoadBalancer", "{service}");
    ensure!(
        service["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-type"]
            == "external",
        "{service}"
    );
    ensure!(
        service["spec"]["selector"]["istio"] == "ingressgateway",
        "{service}"
    );
    Ok(())
}

/// One object of each Istio kind, as Istio's docs write them.
fn one_of_each_kind(ns: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {ns}}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: {ns}}}
spec:
  host: reviews
  subsets: [{{name: v1, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: {ns}}}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{{number: 443, name: tls, protocol: TLS}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: {ns}}}
spec:
  egress: [{{hosts: ['./*', 'istio-system/*']}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: vm-1, namespace: {ns}}}
spec:
  address: 10.1.2.3
  labels: {{app: legacy}}
  serviceAccount: legacy
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {{name: legacy, namespace: {ns}}}
spec:
  metadata: {{labels: {{app: legacy}}}}
  template: {{serviceAccount: legacy}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: {ns}}}
spec:
  mtls: {{mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews-viewer, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/{ns}/sa/productpage]}}}}]
    to: [{{operation: {{methods: [GET]}}}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules: [{{issuer: https://issuer.example.com, jwksUri: https://issuer.example.com/jwks.json}}]
"
    )
}

/// `kubectl apply` of the chart's CRDs alone (what an upgrade runs, server-side), then one
/// object of each kind: the apiserver accepts all ten against the CRDs' schemas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_alone_accept_one_object_of_each_kind() -> anyhow::Result<()> {
    let kube = KubeCluster::shared().await?;
    let crds = chart_dir("capstan").join("crds").display().to_string();
    kube.kubectl(&["apply", "--server-side", "-f", &crds])
        .await?;
    let ns = kube.create_namespace("crds-alone").await?;
    kube.kubectl_apply_yaml(&one_of_each_kind(&ns)).await?;
    let kinds = "virtualservices,destinationrules,gateways,serviceentries,sidecars,\
                 workloadentries,workloadgroups,peerauthentications,authorizationpolicies,\
                 requestauthentications";
    let names = kube
        .kubectl(&["get", kinds, "-n", &ns, "-o", "name"])
        .await?;
    let got = names.lines().count();
    ensure!(got == 10, "{got} objects:\n{names}");
    Ok(())
}

const RELEASE_NS: &str = "capstan-system";
const CHART_SA: &str = "system:serviceaccount:capstan-system:capstan";

/// `kubectl auth can-i --as <chart SA> <args>`, asked by the admin.
async fn chart_sa_can(kube: &KubeCluster, args: &[&str]) -> anyhow::Result<bool> {
    let mut full = vec!["--as", CHART_SA];
    full.extend_from_slice(args);
    kube.can_i(KubeUser::Admin, &full).await
}

/// Creating `yaml` is refused by a webhook: the error names the webhook and its path.
async fn refused_by(
    kube: &KubeCluster,
    what: &str,
    yaml: &str,
    webhook: &str,
    path: &str,
) -> anyhow::Result<()> {
    let out = kube
        .kubectl_output(KubeUser::Admin, &["create", "-f", "-"], Some(yaml))
        .await?;
    ensure!(!out.success(), "{what} was admitted without the webhook");
    ensure!(
        out.stderr.contains(&format!("\"{webhook}\"")) && out.stderr.contains(path),
        "{what}: refused, but not by {webhook} ({path}): {}",
        out.stderr
    );
    Ok(())
}

fn pod_yaml(ns: &str, name: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}
spec:
  containers: [{{name: app, image: example.invalid/app:1}}]
"
    )
}

/// helm install into a real apiserver, then capstan out of cluster as the chart's
/// ServiceAccount serving a real Envoy; upgrade to the production values; uninstall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_then_capstan_serves_envoy_as_the_charts_service_account() -> anyhow::Result<()>
{
    let name = "helm_install_then_capstan_serves_envoy_as_the_charts_service_account";
    let log_dir = locate::fresh_log_dir(name)?;
    // A cluster of its own: the webhooks registered here refuse Istio objects and injected
    // pods (nothing serves them), which would break the other tests on the shared one.
    let kube = KubeCluster::start("helm-install").await?;
    let helm = Helm::new(HelmVersion::V3)?;
    let kubeconfig = kube.admin_kubeconfig().display().to_string();
    let chart = chart_dir("capstan").display().to_string();
    let install = helm
        .run(&[
            "install",
            "capstan",
            &chart,
            "--namespace",
            RELEASE_NS,
            "--create-namespace",
            "--kubeconfig",
            &kubeconfig,
        ])
        .await?;
    std::fs::write(log_dir.join("helm-install.txt"), &install)?;
    ensure!(install.contains("STATUS: deployed"), "{install}");

    for (kind, name) in [
        ("deployment", "capstan"),
        ("service", "capstan"),
        ("service", "istiod"),
        ("serviceaccount", "capstan"),
        ("configmap", "istio"),
        ("role", "capstan"),
        ("rolebinding", "capstan"),
    ] {
        kube.kubectl(&["get", kind, name, "-n", RELEASE_NS]).await?;
    }
    for (kind, name) in [
        ("clusterrole", "capstan-capstan-system"),
        ("clusterrolebinding", "capstan-capstan-system"),
        ("clusterrole", "capstan-capstan-system-webhooks"),
        ("clusterrolebinding", "capstan-capstan-system-webhooks"),
        ("validatingwebhookconfiguration", "capstan-validation"),
        ("mutatingwebhookconfiguration", "capstan-sidecar-injector"),
    ] {
        kube.kubectl(&["get", kind, name]).await?;
    }

    // RBAC as the apiserver judges it for the chart's ServiceAccount.
    let allowed: &[&[&str]] = &[
        &["list", "virtualservices.networking.istio.io", "-A"],
        &["watch", "authorizationpolicies.security.istio.io", "-A"],
        &[
            "patch",
            "virtualservices.networking.istio.io",
            "--subresource=status",
            "-n",
            "shop",
        ],
        &["list", "endpointslices.discovery.k8s.io", "-A"],
        &["watch", "secrets", "-A"],
        &["create", "tokenreviews.authentication.k8s.io"],
        &["update", "configmaps/istio-ca-root-cert", "-n", "shop"],
        &["update", "leases.coordination.k8s.io", "-n", RELEASE_NS],
        &["update", "secrets/istio-ca-secret", "-n", RELEASE_NS],
        &["get", "secrets/cacerts", "-n", RELEASE_NS],
        &[
            "patch",
            "validatingwebhookconfigurations/capstan-validation",
        ],
        &[
            "patch",
            "mutatingwebhookconfigurations/capstan-sidecar-injector",
        ],
    ];
    let denied: &[&[&str]] = &[
        &[
            "create",
            "virtualservices.networking.istio.io",
            "-n",
            "shop",
        ],
        &[
            "update",
            "virtualservices.networking.istio.io",
            "-n",
            "shop",
        ],
        &["delete", "pods", "-n", "shop"],
        &["create", "pods", "-n", "shop"],
        &["update", "secrets/istio-ca-secret", "-n", "shop"],
        &["update", "secrets/other", "-n", RELEASE_NS],
        &["update", "configmaps/other", "-n", "shop"],
        &["update", "leases.coordination.k8s.io", "-n", "shop"],
        &["patch", "validatingwebhookconfigurations/someone-elses"],
        &["patch", "mutatingwebhookconfigurations/someone-elses"],
        &[
            "delete",
            "mutatingwebhookconfigurations/capstan-sidecar-injector",
        ],
        &["update", "services", "-n", "shop"],
    ];
    for args in allowed {
        ensure!(
            chart_sa_can(&kube, args).await?,
            "the chart's SA cannot {args:?}"
        );
    }
    for args in denied {
        ensure!(
            !chart_sa_can(&kube, args).await?,
            "the chart's SA can {args:?}"
        );
    }

    // The webhooks are registered with Istio's selectors: the apiserver calls the injector for
    // pods of labelled namespaces only, and not for pods that opt out; it calls the validator
    // for Istio objects. Nothing serves them here and both fail closed, so a call shows as a
    // refusal naming the webhook.
    kube.kubectl(&["create", "namespace", "injected"]).await?;
    kube.kubectl(&["label", "namespace", "injected", "istio-injection=enabled"])
        .await?;
    kube.kubectl(&["create", "namespace", "injected-rev"])
        .await?;
    kube.kubectl(&["label", "namespace", "injected-rev", "istio.io/rev=default"])
        .await?;
    kube.kubectl(&["create", "namespace", "shop"]).await?;
    refused_by(
        &kube,
        "a pod in an istio-injection=enabled namespace",
        &pod_yaml("injected", "app", "app: web"),
        "namespace.sidecar-injector.capstan.io",
        "/inject",
    )
    .await?;
    refused_by(
        &kube,
        "a pod in an istio.io/rev=default namespace",
        &pod_yaml("injected-rev", "app", "app: web"),
        "rev.namespace.sidecar-injector.capstan.io",
        "/inject",
    )
    .await?;
    kube.kubectl_apply_yaml(&pod_yaml(
        "injected",
        "opted-out",
        "app: web, sidecar.istio.io/inject: 'false'",
    ))
    .await
    .context("a pod labelled sidecar.istio.io/inject=false must not be sent to the injector")?;
    kube.kubectl_apply_yaml(&pod_yaml("shop", "plain", "app: web"))
        .await
        .context(
            "a pod of a namespace without injection labels must not be sent to the injector",
        )?;
    refused_by(
        &kube,
        "a VirtualService",
        one_of_each_kind("shop")
            .split("---\n")
            .next()
            .unwrap_or_default(),
        "validation.capstan.io",
        "/validate",
    )
    .await?;

    // capstan with a token of the chart's ServiceAccount: everything it watches and writes is
    // allowed by the chart's RBAC alone (a forbidden list never completes, and capstan would
    // not serve).
    let token = kube
        .kubectl(&["create", "token", "capstan", "-n", RELEASE_NS])
        .await?;
    let sa_kubeconfig = log_dir.join("chart-sa.kubeconfig");
    pki::write_kubeconfig(
        &sa_kubeconfig,
        kube.server(),
        kube.ca_cert(),
        &pki::token_user(token.trim()),
    )?;
    let pod = TestPod::new("v1");
    kube.kubectl_apply_yaml(&format!(
        "{}---\n{}",
        service_yaml("shop"),
        endpoint_slice_yaml("shop", "reviews-1", std::slice::from_ref(&pod), &[])
    ))
    .await?;
    let capstan = Capstan::start_kube(
        &sa_kubeconfig,
        &[
            "--namespace",
            RELEASE_NS,
            "--xds-tls-dns-names",
            "capstan.capstan-system.svc,istiod.capstan-system.svc",
        ],
        &log_dir,
        "capstan",
    )
    .await?;
    let mut bootstrap = Bootstrap::new(AdsMode::Delta, capstan.xds_port);
    bootstrap.namespace = "shop".into();
    bootstrap.workload = "productpage-v1-0".into();
    let envoy = Envoy::start(&locate::envoy_bin()?, &bootstrap, &log_dir, "envoy").await?;
    envoy
        .wait_listener_port(OUTBOUND_LISTENER, CONFIG_TIMEOUT)
        .await
        .with_context(|| format!("logs in {}", log_dir.display()))?;
    let cluster = "outbound|9080||reviews.shop.svc.cluster.local";
    wait_until(
        &format!("Envoy to hold {cluster} with the pod"),
        CONFIG_TIMEOUT,
        async || {
            let dump = envoy.config_dump(true).await?.to_string();
            ensure!(dump.contains(cluster), "no {cluster} yet");
            ensure!(
                dump.contains(&pod.addr.ip().to_string()),
                "no endpoint {} yet",
                pod.addr
            );
            Ok(())
        },
    )
    .await?;
    envoy.ensure_no_rejected_updates().await?;

    // Its CA, under the chart's Role: the root in the release namespace, the bundle published.
    wait_until(
        "capstan's CA Secret and root ConfigMap",
        CONFIG_TIMEOUT,
        async || {
            kube.kubectl(&["get", "secret", "istio-ca-secret", "-n", RELEASE_NS])
                .await?;
            kube.kubectl(&["get", "configmap", "istio-ca-root-cert", "-n", "shop"])
                .await?;
            Ok(())
        },
    )
    .await?;
    let forbidden = capstan.process.log_lines(|l| l.contains("forbidden"));
    ensure!(forbidden.is_empty(), "forbidden calls: {forbidden:?}");
    let metrics = capstan.monitoring_get("/metrics").await?.text();
    let errors: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("capstan_kube_watch_errors_total{"))
        .collect();
    ensure!(errors.is_empty(), "watch errors: {errors:?}");

    // The gateway chart installs beside it.
    let gateway = chart_dir("capstan-gateway").display().to_string();
    helm.run(&[
        "install",
        "istio-ingressgateway",
        &gateway,
        "--namespace",
        "istio-ingress",
        "--create-namespace",
        "--kubeconfig",
        &kubeconfig,
    ])
    .await?;
    let service = kube
        .kubectl(&[
            "get",
            "service",
            "istio-ingressgateway",
            "-n",
            "istio-ingress",
            "-o",
            "json",
        ])
        .await?;
    let service: Value = serde_json::from_str(&service)?;
    ensure!(service["spec"]["type"] == "LoadBalancer", "{service}");

    // Upgrade to the production values: three replicas and a PDB, accepted by the apiserver.
    helm.run(&[
        "upgrade",
        "capstan",
        &chart,
        "--namespace",
        RELEASE_NS,
        "--kubeconfig",
        &kubeconfig,
        "-f",
        &values_path("values-prod.yaml"),
    ])
    .await?;
    let replicas = kube
        .kubectl(&[
            "get",
            "deployment",
            "capstan",
            "-n",
            RELEASE_NS,
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .await?;
    ensure!(
        replicas.trim() == "3",
        "replicas after the upgrade: {replicas}"
    );
    kube.kubectl(&["get", "pdb", "capstan", "-n", RELEASE_NS])
        .await?;

    // Uninstall removes the webhook configurations (else they would refuse pods and Istio
    // objects forever), and admission is back to normal.
    helm.run(&[
        "uninstall",
        "capstan",
        "--namespace",
        RELEASE_NS,
        "--kubeconfig",
        &kubeconfig,
    ])
    .await?;
    for kind in [
        "validatingwebhookconfigurations",
        "mutatingwebhookconfigurations",
    ] {
        let left = kube.kubectl(&["get", kind, "-o", "name"]).await?;
        ensure!(left.trim().is_empty(), "left after uninstall: {left}");
    }
    kube.kubectl_apply_yaml(&pod_yaml("injected", "after", "app: web"))
        .await?;
    Ok(())
}

const CLOUD_MAP_CONFIG_MAP: &str = "capstan-cloud-map";
const CLOUD_MAP_FILE: &str = "/etc/capstan/cloud-map/config.yaml";
/// The verbs the materialised mode needs on ServiceEntries of its mesh namespace.
const CLOUD_MAP_VERBS: [&str; 7] = [
    "get", "list", "watch", "create", "patch", "update", "delete",
];

/// A values file in `dir`; its path.
fn write_values(dir: &Path, name: &str, yaml: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, yaml)?;
    Ok(path.display().to_string())
}

/// The Cloud Map config file of a rendered or stored ConfigMap, read by capstan's own reader
/// (what `capstan run --cloud-map-config` calls at start) from a file in `dir`.
fn read_cloud_map_config(dir: &Path, text: &str) -> anyhow::Result<CloudMapConfig> {
    let file = dir.join("config.yaml");
    std::fs::write(&file, text)?;
    CloudMapConfig::read(&file).with_context(|| format!("capstan refuses the file:\n{text}"))
}

/// The deployment's volume mounting the ConfigMap `config_map`, and where it is mounted.
fn config_map_mount(deployment: &Value, config_map: &str) -> anyhow::Result<(String, Value)> {
    let volume = deployment
        .pointer("/spec/template/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|v| v["configMap"]["name"] == config_map)
        .with_context(|| format!("no volume of ConfigMap {config_map}: {deployment}"))?;
    let name = volume["name"].as_str().context("a volume without name")?;
    let mount = container(deployment)?["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == name)
        .with_context(|| format!("volume {name} is not mounted"))?;
    Ok((name.to_string(), mount.clone()))
}

/// Everything the chart adds for Cloud Map, absent: used with every preset's values.
fn ensure_no_cloud_map(objects: &[Value], what: &str) -> anyhow::Result<()> {
    for o in objects {
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        ensure!(
            !name.contains("cloud-map"),
            "{what}: {} {name} rendered with Cloud Map off",
            o["kind"]
        );
    }
    ensure!(
        count(objects, "Role") == 1 && count(objects, "RoleBinding") == 1,
        "{what}: only the release namespace's Role"
    );
    ensure!(count(objects, "Namespace") == 0, "{what}");
    let deployment = find(objects, "Deployment", "capstan")?;
    let args = deployment_args(deployment)?;
    ensure!(
        !args.iter().any(|a| a.contains("cloud-map")),
        "{what}: {args:?}"
    );
    let text = deployment.to_string();
    ensure!(
        !text.contains("cloud-map"),
        "{what}: the Deployment mentions Cloud Map: {deployment}"
    );
    Ok(())
}

/// Cloud Map in the materialised mode: the config file in a ConfigMap that capstan's own
/// reader accepts, mounted where the `--cloud-map-config` argument points; a Role in the mesh
/// namespace with exactly the ServiceEntry verbs the harness's (and so the materialised e2e
/// test's) Role has; IRSA on the ServiceAccount. The in-memory mode: no Role. Off (every
/// preset): none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_map_values_render_the_config_file_its_mount_and_the_materialised_role()
-> anyhow::Result<()> {
    let helm = Helm::new(HelmVersion::V3)?;
    let dir = tempfile::tempdir()?;
    let role_arn = "arn:aws:iam::123456789012:role/capstan-cloud-map";
    let values = write_values(
        dir.path(),
        "cloud-map.yaml",
        &format!(
            "serviceAccount:
  annotations:
    eks.amazonaws.com/role-arn: {role_arn}
cloudMap:
  enabled: true
  config:
    namespaces: [{{name: example.local}}, {{id: ns-abc123}}]
    mode: materialize
    meshNamespace: aws-services
    interval: 15s
    hostTemplate: \"{{service}}.{{namespace}}.aws\"
    services:
    - namespace: example.local
      name: orders
      ports: [{{name: http, number: 80, protocol: HTTP, targetPort: 8080}}]
"
        ),
    )?;
    let objects = render(&helm, &["-f", &values]).await?;

    // The file, as capstan reads it.
    let config_map = find(&objects, "ConfigMap", CLOUD_MAP_CONFIG_MAP)?;
    ensure!(
        config_map["metadata"]["namespace"] == "istio-system",
        "{config_map}"
    );
    let data = config_map["data"].as_object().context("no data")?;
    ensure!(
        data.keys().eq(["config.yaml"]),
        "one key, config.yaml: {data:?}"
    );
    let text = data["config.yaml"].as_str().context("not a string")?;
    let config = read_cloud_map_config(dir.path(), text)?;
    ensure!(
        config.namespaces
            == [
                NamespaceRef {
                    name: Some("example.local".into()),
                    id: None
                },
                NamespaceRef {
                    name: None,
                    id: Some("ns-abc123".into())
                },
            ],
        "{config:?}"
    );
    ensure!(config.mode == Mode::Materialize, "{config:?}");
    ensure!(config.mesh_namespace == "aws-services", "{config:?}");
    ensure!(
        config.interval == std::time::Duration::from_secs(15),
        "{config:?}"
    );
    ensure!(
        config.host("example.local", "orders") == "orders.example.local.aws",
        "{config:?}"
    );
    let ports = config
        .ports_of("example.local", "orders")
        .context("the orders ports")?;
    ensure!(
        ports.len() == 1 && ports[0].number == 80 && ports[0].target_port == 8080,
        "{ports:?}"
    );
    // What the values leave out keeps capstan's defaults.
    let defaults = CloudMapConfig::default();
    ensure!(
        config.jitter == defaults.jitter && config.region.is_none() && config.endpoint.is_none()
    );

    // The argument names the file where the ConfigMap is mounted, read-only; a change of the
    // file rolls the pods (capstan reads it at start).
    let deployment = find(&objects, "Deployment", "capstan")?;
    let args = deployment_args(deployment)?;
    let arg = format!("--cloud-map-config={CLOUD_MAP_FILE}");
    ensure!(
        args.iter()
            .filter(|a| a.starts_with("--cloud-map-config"))
            .count()
            == 1
            && args.contains(&arg),
        "{arg} not in {args:?}"
    );
    let (_, mount) = config_map_mount(deployment, CLOUD_MAP_CONFIG_MAP)?;
    ensure!(mount["readOnly"] == true, "{mount}");
    let dir_path = mount["mountPath"].as_str().context("no mountPath")?;
    ensure!(
        format!("{dir_path}/config.yaml") == CLOUD_MAP_FILE,
        "mounted at {dir_path}"
    );
    ensure!(
        deployment
            .pointer("/spec/template/metadata/annotations/checksum~1cloud-map-config")
            .is_some(),
        "{deployment}"
    );

    // Credentials: IRSA.
    let sa = find(&objects, "ServiceAccount", "capstan")?;
    ensure!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role_arn,
        "{sa}"
    );

    // The Role: in the mesh namespace, ServiceEntries only, exactly the harness's rules.
    let role = find(&objects, "Role", "capstan-istio-system-cloud-map")?;
    ensure!(role["metadata"]["namespace"] == "aws-services", "{role}");
    let rules = role["rules"].as_array().context("no rules")?;
    ensure!(rules.len() == 1, "{role}");
    ensure!(
        rules[0]["apiGroups"] == serde_json::json!(["networking.istio.io"])
            && rules[0]["resources"] == serde_json::json!(["serviceentries"])
            && rules[0].get("resourceNames").is_none(),
        "{role}"
    );
    let verbs: BTreeSet<&str> = rules[0]["verbs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        verbs == BTreeSet::from(CLOUD_MAP_VERBS)
            && rules[0]["verbs"].as_array().map(Vec::len) == Some(CLOUD_MAP_VERBS.len()),
        "{role}"
    );
    let harness = helm::yaml_objects(&cloud_map_role_yaml("aws-services")).await?;
    let harness_role = find(&harness, "Role", "capstan-cloud-map")?;
    ensure!(
        role["rules"] == harness_role["rules"],
        "the chart's Role differs from the one the materialised e2e test runs under:\nchart: {}\nharness: {}",
        role["rules"],
        harness_role["rules"]
    );
    let binding = find(&objects, "RoleBinding", "capstan-istio-system-cloud-map")?;
    ensure!(
        binding["metadata"]["namespace"] == "aws-services",
        "{binding}"
    );
    ensure!(
        binding["roleRef"]
            == serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "capstan-istio-system-cloud-map"}),
        "{binding}"
    );
    ensure!(
        binding["subjects"]
            == serde_json::json!([{"kind": "ServiceAccount", "name": "capstan",
                                   "namespace": "istio-system"}]),
        "{binding}"
    );
    // Nothing else widens: the same ClusterRoles as without Cloud Map, no Namespace unless
    // asked for.
    let off = render_with(&helm, "values.yaml").await?;
    for name in ["capstan-istio-system", "capstan-istio-system-webhooks"] {
        ensure!(
            find(&objects, "ClusterRole", name)?["rules"]
                == find(&off, "ClusterRole", name)?["rules"],
            "ClusterRole {name} changed with Cloud Map on"
        );
    }
    ensure!(count(&objects, "ClusterRole") == 2 && count(&objects, "Namespace") == 0);

    // createMeshNamespace: the Namespace, without the labels that would have its pods injected.
    let created = render(
        &helm,
        &["-f", &values, "--set", "cloudMap.createMeshNamespace=true"],
    )
    .await?;
    let namespace = find(&created, "Namespace", "aws-services")?;
    let labels = &namespace["metadata"]["labels"];
    ensure!(
        labels.get("istio.io/rev").is_none() && labels.get("istio-injection").is_none(),
        "{namespace}"
    );
    // ... but never the release namespace, which is not the release's to create.
    let out = helm
        .output(&[
            "template",
            "capstan",
            &chart_dir("capstan").display().to_string(),
            "--namespace",
            "aws-services",
            "-f",
            &values,
            "--set",
            "cloudMap.createMeshNamespace=true",
        ])
        .await?;
    ensure!(
        !out.success && out.stderr.contains("cloudMap.createMeshNamespace"),
        "{}",
        out.stderr
    );

    // The in-memory mode (the default): the file and its mount, nothing written, no Role.
    let in_memory = render(
        &helm,
        &[
            "--set",
            "cloudMap.enabled=true,cloudMap.config.namespaces[0].name=example.local",
        ],
    )
    .await?;
    let text = find(&in_memory, "ConfigMap", CLOUD_MAP_CONFIG_MAP)?["data"]["config.yaml"]
        .as_str()
        .context("no config.yaml")?;
    let config = read_cloud_map_config(dir.path(), text)?;
    ensure!(
        config.mode == Mode::InMemory && config.mesh_namespace == "cloud-map",
        "{config:?}"
    );
    let deployment = find(&in_memory, "Deployment", "capstan")?;
    ensure!(deployment_args(deployment)?.contains(&arg));
    config_map_mount(deployment, CLOUD_MAP_CONFIG_MAP)?;
    ensure!(count(&in_memory, "Role") == 1 && count(&in_memory, "RoleBinding") == 1);

    // Off, as every preset has it: none of the above.
    for file in VALUES_FILES {
        ensure_no_cloud_map(&render_with(&helm, file).await?, file)?;
    }
    Ok(())
}

/// The materialised mode on the shared apiserver, under the chart's RBAC alone: `helm install`
/// (webhooks off: nothing serves them on the shared cluster) creates the mesh namespace, the
/// ConfigMap and the Role; the apiserver lets the chart's ServiceAccount write ServiceEntries
/// there and nowhere else; and capstan, run with a token of that ServiceAccount and the
/// config file as the apiserver stores it (pointed at moto on loopback, never AWS), writes the
/// ServiceEntry of a Cloud Map service with no forbidden call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_with_cloud_map_materialised_under_the_charts_rbac() -> anyhow::Result<()> {
    let name = "helm_install_with_cloud_map_materialised_under_the_charts_rbac";
    let log_dir = locate::fresh_log_dir(name)?;
    let kube = KubeCluster::shared().await?;
    let helm = Helm::new(HelmVersion::V3)?;
    let release_ns = kube.create_namespace("cm-release").await?;
    let mesh_ns = format!("{release_ns}-mesh");
    let service_account = format!("system:serviceaccount:{release_ns}:capstan");

    let moto = Moto::start(&log_dir, &MotoFaults::default()).await?;
    let cloud_map = CloudMap::new(&moto).await?;
    let ns = cloud_map.create_http_namespace("example.local").await?;
    let orders = cloud_map
        .create_service(&ns, "orders", ServiceHealth::None)
        .await?;
    cloud_map
        .register(
            &orders,
            "i-1",
            &[
                ("AWS_INSTANCE_IPV4", "10.0.0.1"),
                ("AWS_INSTANCE_PORT", "8080"),
                ("protocol", "HTTP"),
            ],
        )
        .await?;

    let values = write_values(
        &log_dir,
        "values-cloud-map.yaml",
        &format!(
            "webhooks:
  validation: {{enabled: false}}
  injection: {{enabled: false}}
cloudMap:
  enabled: true
  createMeshNamespace: true
  config:
    namespaces: [{{name: example.local}}]
    mode: materialize
    meshNamespace: {mesh_ns}
    interval: 1s
    jitter: 0
    region: {}
    endpoint: {}
",
            capstan_e2e::moto::REGION,
            moto.endpoint_url()
        ),
    )?;
    let kubeconfig = kube.admin_kubeconfig().display().to_string();
    let chart = chart_dir("capstan").display().to_string();
    let install = helm
        .run(&[
            "install",
            "capstan",
            &chart,
            "--namespace",
            &release_ns,
            "--skip-crds",
            "--kubeconfig",
            &kubeconfig,
            "-f",
            &values,
        ])
        .await?;
    std::fs::write(log_dir.join("helm-install.txt"), &install)?;
    ensure!(install.contains("STATUS: deployed"), "{install}");
    let role = format!("capstan-{release_ns}-cloud-map");
    kube.kubectl(&["get", "namespace", &mesh_ns]).await?;
    for kind in ["role", "rolebinding"] {
        kube.kubectl(&["get", kind, &role, "-n", &mesh_ns]).await?;
    }

    // The apiserver's judgement of the chart's ServiceAccount.
    let can = async |args: &[&str]| {
        let mut full = vec!["--as", service_account.as_str()];
        full.extend_from_slice(args);
        kube.can_i(KubeUser::Admin, &full).await
    };
    for verb in CLOUD_MAP_VERBS {
        ensure!(
            can(&[verb, "serviceentries.networking.istio.io", "-n", &mesh_ns]).await?,
            "the chart's SA cannot {verb} ServiceEntries in {mesh_ns}"
        );
    }
    for args in [
        &[
            "create",
            "serviceentries.networking.istio.io",
            "-n",
            &release_ns,
        ][..],
        &[
            "delete",
            "serviceentries.networking.istio.io",
            "-n",
            "default",
        ],
        &[
            "create",
            "virtualservices.networking.istio.io",
            "-n",
            &mesh_ns,
        ],
        &["delete", "configmaps", "-n", &mesh_ns],
        &[
            "deletecollection",
            "serviceentries.networking.istio.io",
            "-n",
            &mesh_ns,
        ],
    ] {
        ensure!(!can(args).await?, "the chart's SA can {args:?}");
    }

    // The file the pod would mount, as the apiserver stores it, read by capstan's reader.
    let text = kube
        .kubectl(&[
            "get",
            "configmap",
            CLOUD_MAP_CONFIG_MAP,
            "-n",
            &release_ns,
            "-o",
            "jsonpath={.data.config\\.yaml}",
        ])
        .await?;
    let config = read_cloud_map_config(&log_dir, &text)?;
    ensure!(
        config.mode == Mode::Materialize && config.mesh_namespace == mesh_ns,
        "{config:?}"
    );
    let config_file = log_dir.join("config.yaml");

    // capstan as the chart's ServiceAccount.
    let token = kube
        .kubectl(&["create", "token", "capstan", "-n", &release_ns])
        .await?;
    let sa_kubeconfig = log_dir.join("chart-sa.kubeconfig");
    pki::write_kubeconfig(
        &sa_kubeconfig,
        kube.server(),
        kube.ca_cert(),
        &pki::token_user(token.trim()),
    )?;
    let dns_names = format!("capstan.{release_ns}.svc");
    let capstan = Capstan::start_kube(
        &sa_kubeconfig,
        &[
            "--namespace",
            &release_ns,
            "--xds-tls-dns-names",
            &dns_names,
            "--cloud-map-config",
            &config_file.display().to_string(),
        ],
        &log_dir,
        "capstan",
    )
    .await?;
    wait_until(
        "the orders ServiceEntry in the mesh namespace",
        CONFIG_TIMEOUT,
        async || {
            let json = kube
                .kubectl(&[
                    "get",
                    "serviceentry",
                    "orders-example-local",
                    "-n",
                    &mesh_ns,
                    "-o",
                    "json",
                ])
                .await?;
            let se: Value = serde_json::from_str(&json)?;
            ensure!(
                se["metadata"]["labels"]["capstan.io/managed-by"] == "cloudmap",
                "{se}"
            );
            ensure!(se["spec"]["hosts"][0] == "orders.example.local", "{se}");
            ensure!(se["spec"]["endpoints"][0]["address"] == "10.0.0.1", "{se}");
            Ok(())
        },
    )
    .await
    .with_context(|| format!("logs in {}", log_dir.display()))?;
    let forbidden = capstan.process.log_lines(|l| l.contains("forbidden"));
    ensure!(forbidden.is_empty(), "forbidden calls: {forbidden:?}");
    Ok(())
}
