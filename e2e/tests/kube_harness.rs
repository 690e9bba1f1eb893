//! Checks of the Kubernetes harness itself against a real etcd + kube-apiserver: version and
//! CRDs, the bookinfo fixtures through the apiserver's schema validation, capstan's RBAC as
//! the apiserver evaluates it, and an apiserver restart that keeps etcd's data.

use std::path::PathBuf;

use anyhow::{Context, ensure};
use capstan_e2e::kube::{CAPSTAN_USER, KubeCluster, KubeUser};
use serde_json::Value;

const KUBE_VERSION: &str = "v1.36.3";

const ISTIO_CRDS: [&str; 10] = [
    "serviceentries.networking.istio.io",
    "destinationrules.networking.istio.io",
    "virtualservices.networking.istio.io",
    "gateways.networking.istio.io",
    "sidecars.networking.istio.io",
    "workloadentries.networking.istio.io",
    "workloadgroups.networking.istio.io",
    "peerauthentications.security.istio.io",
    "authorizationpolicies.security.istio.io",
    "requestauthentications.security.istio.io",
];

fn bookinfo(file: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/bookinfo")
        .join(file)
        .display()
        .to_string()
}

fn json(text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_reports_its_version_and_the_crds_are_established() -> anyhow::Result<()> {
    let kube = KubeCluster::shared().await?;
    ensure!(
        std::ptr::eq(kube, KubeCluster::shared().await?),
        "a second shared() call started another cluster"
    );
    let version = json(&kube.kubectl(&["get", "--raw=/version"]).await?)?;
    ensure!(
        version["gitVersion"] == KUBE_VERSION,
        "apiserver reports {version}"
    );

    let crds = json(&kube.kubectl(&["get", "crds", "-o", "json"]).await?)?;
    let items = crds["items"].as_array().context("no items")?;
    for name in ISTIO_CRDS {
        let crd = items
            .iter()
            .find(|c| c["metadata"]["name"] == name)
            .with_context(|| format!("CRD {name} missing"))?;
        let established = crd["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Established" && c["status"] == "True");
        ensure!(established, "CRD {name} not Established: {}", crd["status"]);
    }
    ensure!(
        items.len() == ISTIO_CRDS.len(),
        "expected exactly the ten Istio CRDs, found {}",
        items.len()
    );

    // Both identities authenticate as what the token file and the certificate say.
    let whoami = json(
        &kube
            .kubectl_as(KubeUser::Capstan, &["auth", "whoami", "-o", "json"])
            .await?,
    )?;
    ensure!(
        whoami["status"]["userInfo"]["username"] == CAPSTAN_USER,
        "{whoami}"
    );
    let groups = &whoami["status"]["userInfo"]["groups"];
    for g in [
        "system:serviceaccounts",
        "system:serviceaccounts:istio-system",
        "system:authenticated",
    ] {
        ensure!(
            groups.as_array().is_some_and(|a| a.iter().any(|x| x == g)),
            "capstan lacks group {g}: {groups}"
        );
    }
    ensure!(
        kube.can_i(KubeUser::Admin, &["*", "*", "--all-namespaces"])
            .await?,
        "admin is not cluster-admin"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_fixtures_apply_and_read_back() -> anyhow::Result<()> {
    let kube = KubeCluster::shared().await?;
    let ns = kube.create_namespace("bookinfo").await?;
    for file in ["destination-rule-all.yaml", "virtual-service-all-v1.yaml"] {
        kube.kubectl(&["apply", "-n", &ns, "-f", &bookinfo(file)])
            .await?;
    }

    let drs = json(
        &kube
            .kubectl(&["get", "destinationrules", "-n", &ns, "-o", "json"])
            .await?,
    )?;
    let mut subsets: Vec<(String, Vec<String>)> = drs["items"]
        .as_array()
        .context("no items")?
        .iter()
        .map(|dr| {
            let names = dr["spec"]["subsets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| s["name"].as_str().unwrap_or_default().to_string())
                .collect();
            (
                dr["spec"]["host"].as_str().unwrap_or_default().to_string(),
                names,
            )
        })
        .collect();
    subsets.sort();
    let expected: Vec<(String, Vec<String>)> = [
        ("details", &["v1", "v2"][..]),
        ("productpage", &["v1"]),
        ("ratings", &["v1", "v2", "v3"]),
        ("reviews", &["v1", "v2", "v3"]),
    ]
    .iter()
    .map(|(h, s)| (h.to_string(), s.iter().map(|x| x.to_string()).collect()))
    .collect();
    ensure!(
        subsets == expected,
        "destination rules read back as {subsets:?}"
    );

    let reviews_routes = async || -> anyhow::Result<Value> {
        let vs = json(
            &kube
                .kubectl(&["get", "virtualservice", "reviews", "-n", &ns, "-o", "json"])
                .await?,
        )?;
        Ok(vs["spec"]["http"].clone())
    };
    let all_v1 = json(
        &kube
            .kubectl(&["get", "virtualservices", "-n", &ns, "-o", "json"])
            .await?,
    )?;
    let vss = all_v1["items"].as_array().context("no items")?;
    ensure!(
        vss.len() == 4,
        "expected 4 VirtualServices, got {}",
        vss.len()
    );
    for vs in vss {
        let dest = &vs["spec"]["http"][0]["route"][0]["destination"];
        ensure!(
            dest["subset"] == "v1" && dest["host"] == vs["metadata"]["name"],
            "{vs}"
        );
    }

    kube.kubectl(&[
        "apply",
        "-n",
        &ns,
        "-f",
        &bookinfo("virtual-service-reviews-v2-v3.yaml"),
    ])
    .await?;
    let http = reviews_routes().await?;
    let split: Vec<(Value, Value)> = http[0]["route"]
        .as_array()
        .context("no route")?
        .iter()
        .map(|r| (r["destination"]["subset"].clone(), r["weight"].clone()))
        .collect();
    ensure!(
        split == [("v2".into(), 50.into()), ("v3".into(), 50.into())],
        "reviews split read back as {http}"
    );

    kube.kubectl(&[
        "apply",
        "-n",
        &ns,
        "-f",
        &bookinfo("virtual-service-reviews-jason-v2-v3.yaml"),
    ])
    .await?;
    let http = reviews_routes().await?;
    ensure!(
        http[0]["match"][0]["headers"]["end-user"]["exact"] == "jason"
            && http[0]["route"][0]["destination"]["subset"] == "v2"
            && http[1]["route"][0]["destination"]["subset"] == "v3"
            && http.as_array().map(Vec::len) == Some(2),
        "jason routing read back as {http}"
    );

    // The apiserver, not kubectl, holds the CRD schema: a string weight is refused.
    let bad = format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bad-weight
  namespace: {ns}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews}}
      weight: fifty
"
    );
    let err = kube
        .kubectl_apply_yaml(&bad)
        .await
        .err()
        .context("a VirtualService with weight \"fifty\" was accepted")?;
    let msg = format!("{err:#}");
    ensure!(msg.contains("weight") && msg.contains("integer"), "{msg}");
    Ok(())
}

// On a current-thread runtime on purpose: the harness must not need a second worker.
#[tokio::test]
async fn capstan_service_account_has_exactly_its_rbac() -> anyhow::Result<()> {
    let kube = KubeCluster::shared().await?;
    let allowed: &[&[&str]] = &[
        &[
            "list",
            "virtualservices.networking.istio.io",
            "--all-namespaces",
        ],
        &[
            "watch",
            "authorizationpolicies.security.istio.io",
            "--all-namespaces",
        ],
        &[
            "patch",
            "virtualservices.networking.istio.io",
            "--subresource=status",
        ],
        &[
            "update",
            "peerauthentications.security.istio.io",
            "--subresource=status",
        ],
        &[
            "list",
            "endpointslices.discovery.k8s.io",
            "--all-namespaces",
        ],
        &["watch", "pods", "--all-namespaces"],
        &["get", "nodes"],
        &["create", "leases.coordination.k8s.io", "-n", "istio-system"],
        &["update", "leases.coordination.k8s.io", "-n", "istio-system"],
        &["create", "tokenreviews.authentication.k8s.io"],
        &["get", "secrets/istio-ca-secret", "-n", "istio-system"],
        &["update", "secrets/istio-ca-secret", "-n", "istio-system"],
        &["watch", "secrets/cacerts", "-n", "istio-system"],
        // Gateway certificates (credentialName), read wherever the Gateways are.
        &["list", "secrets", "--all-namespaces"],
        &["watch", "secrets", "--all-namespaces"],
        &["get", "secrets/shop-cert", "-n", "default"],
        &["update", "configmaps/istio-ca-root-cert", "-n", "default"],
        &["create", "configmaps", "-n", "default"],
    ];
    let forbidden: &[&[&str]] = &[
        &["delete", "services"],
        &["create", "secrets", "-n", "default"],
        &["update", "secrets/shop-cert", "-n", "default"],
        &["update", "secrets/some-app-secret", "-n", "istio-system"],
        &["patch", "secrets/istio-ca-secret", "-n", "default"],
        &["update", "secrets/cacerts", "-n", "istio-system"],
        &["delete", "secrets/istio-ca-secret", "-n", "istio-system"],
        &["get", "configmaps/kube-root-ca.crt", "-n", "default"],
        &["update", "configmaps/some-app-config", "-n", "default"],
        &["delete", "configmaps/istio-ca-root-cert", "-n", "default"],
        &["create", "virtualservices.networking.istio.io"],
        &["patch", "virtualservices.networking.istio.io"],
        &["list", "configmaps", "-n", "istio-system"],
        &["create", "leases.coordination.k8s.io", "-n", "default"],
        &["delete", "leases.coordination.k8s.io", "-n", "istio-system"],
    ];
    let mut wrong = Vec::new();
    for (cases, expect) in [(allowed, true), (forbidden, false)] {
        for args in cases {
            if kube.can_i(KubeUser::Capstan, args).await? != expect {
                wrong.push(format!("can-i {} should be {expect}", args.join(" ")));
            }
        }
    }
    ensure!(
        wrong.is_empty(),
        "capstan's RBAC is off:\n{}",
        wrong.join("\n")
    );

    // The same decisions on real requests.
    kube.kubectl_as(
        KubeUser::Capstan,
        &[
            "get",
            "virtualservices.networking.istio.io",
            "--all-namespaces",
        ],
    )
    .await?;
    kube.kubectl_as(KubeUser::Capstan, &["get", "secrets", "--all-namespaces"])
        .await?;
    let denied = kube
        .kubectl_output(
            KubeUser::Capstan,
            &[
                "create",
                "secret",
                "generic",
                "capstan-probe",
                "-n",
                "default",
                "--from-literal=probe=1",
            ],
            None,
        )
        .await?;
    ensure!(
        !denied.success() && denied.stderr.contains("forbidden"),
        "writing a secret as capstan: {denied:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_restart_keeps_objects() -> anyhow::Result<()> {
    // A private cluster: stopping the shared apiserver would fail the other tests.
    let kube = KubeCluster::start("kube_harness-restart").await?;
    let ns = kube.create_namespace("restart").await?;
    kube.kubectl(&[
        "apply",
        "-n",
        &ns,
        "-f",
        &bookinfo("virtual-service-reviews-v2-v3.yaml"),
    ])
    .await?;
    let get = ["get", "virtualservice", "reviews", "-n", &ns, "-o", "json"];
    let before = json(&kube.kubectl(&get).await?)?;

    kube.stop_apiserver().await?;
    let down = kube.kubectl_output(KubeUser::Admin, &get, None).await?;
    ensure!(
        !down.success(),
        "apiserver still answers after stop: {down:?}"
    );
    kube.start_apiserver().await?;

    let after = json(&kube.kubectl(&get).await?)?;
    for field in ["uid", "resourceVersion"] {
        ensure!(
            after["metadata"][field] == before["metadata"][field],
            "{field} changed across the restart: {} -> {}",
            before["metadata"][field],
            after["metadata"][field]
        );
    }
    ensure!(after["spec"] == before["spec"], "spec changed: {after}");
    // The restarted apiserver still enforces capstan's RBAC.
    ensure!(
        !kube
            .can_i(KubeUser::Capstan, &["create", "secrets", "-n", "default"])
            .await?,
        "capstan may create secrets after the restart"
    );
    Ok(())
}
