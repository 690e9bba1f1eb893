//! The `reviews` mesh on a real API server: a Service, three Pods (v1, v2, v3) with an
//! EndpointSlice naming them at pod-network addresses, a DestinationRule with their subsets,
//! capstan watching the API server as the RBAC-limited `capstan` user, and one Envoy claiming
//! to be a pod of the test's namespace. Each "pod" is a `capstan-upstream` bound to its pod
//! address (see [`crate::netns`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};

use anyhow::{Context, ensure};

use crate::capstan::Capstan;
use crate::envoy::{AdsMode, Bootstrap, Envoy, loopback};
use crate::http::{HttpClient, UpstreamReply};
use crate::kube::KubeCluster;
use crate::locate;
use crate::mesh::{CONFIG_TIMEOUT, OUTBOUND_LISTENER};
use crate::netns;
use crate::upstreams::Upstreams;
use crate::wait::wait_until;

pub const REVIEWS_PORT: u16 = 9080;

/// Pod addresses are unique across the tests of one binary (they share the API server and
/// the network namespace).
static NEXT_POD: AtomicU16 = AtomicU16::new(1);

/// A pod: its name, `version` label, the version its upstream answers with, and address.
#[derive(Debug, Clone)]
pub struct TestPod {
    pub name: String,
    pub version: String,
    pub reply: String,
    pub addr: SocketAddr,
}

impl TestPod {
    pub fn new(version: &str) -> Self {
        Self::answering(version, version)
    }

    /// A pod labelled `version` whose upstream answers `reply` (to tell pods of one version
    /// apart by their answers).
    pub fn answering(version: &str, reply: &str) -> Self {
        let n = NEXT_POD.fetch_add(1, Ordering::Relaxed);
        Self {
            name: format!("reviews-{version}-{n}"),
            version: version.to_string(),
            reply: reply.to_string(),
            addr: SocketAddr::from((netns::pod_ip(n), REVIEWS_PORT)),
        }
    }
}

pub struct KubeReviewsMesh {
    pub proxy: HttpClient,
    pub envoy: Envoy,
    pub capstan: Capstan,
    pub upstreams: Vec<Upstreams>,
    pub pods: Vec<TestPod>,
    pub cluster: &'static KubeCluster,
    pub namespace: String,
    pub log_dir: std::path::PathBuf,
}

impl KubeReviewsMesh {
    /// Applies the mesh (and `virtual_service`, if any) in a fresh namespace, then starts
    /// capstan with `capstan_args` and an Envoy, and waits for Envoy's outbound listener.
    pub async fn start(
        name: &str,
        upstream_bin: &Path,
        mode: AdsMode,
        virtual_service: Option<&str>,
        capstan_args: &[&str],
    ) -> anyhow::Result<Self> {
        netns::pod_network()?;
        let log_dir = locate::fresh_log_dir(name)?;
        let cluster = KubeCluster::shared().await?;
        let namespace = cluster.create_namespace("reviews").await?;
        let pods: Vec<TestPod> = ["v1", "v2", "v3"].iter().map(|v| TestPod::new(v)).collect();
        let mut upstreams = Vec::new();
        for pod in &pods {
            upstreams.push(start_pod(upstream_bin, pod, &log_dir).await?);
        }
        let mut yaml = vec![
            service_yaml(&namespace),
            destination_rule_yaml(&namespace, &["v1", "v2", "v3"]),
            endpoint_slice_yaml(&namespace, "reviews-1", &pods, &[]),
        ];
        yaml.extend(pods.iter().map(|p| pod_yaml(&namespace, p)));
        yaml.extend(virtual_service.map(str::to_string));
        apply(cluster, &log_dir, "mesh", &yaml.join("---\n")).await?;

        let capstan = Capstan::start_kube(
            cluster.capstan_kubeconfig(),
            capstan_args,
            &log_dir,
            "capstan",
        )
        .await?;
        let mut bootstrap = Bootstrap::new(mode, capstan.xds_port);
        bootstrap.namespace = namespace.clone();
        bootstrap.workload = "productpage-v1-0".into();
        let envoy = Envoy::start(&locate::envoy_bin()?, &bootstrap, &log_dir, "envoy").await?;
        let port = envoy
            .wait_listener_port(OUTBOUND_LISTENER, CONFIG_TIMEOUT)
            .await
            .with_context(|| format!("logs in {}", log_dir.display()))?;
        Ok(Self {
            proxy: HttpClient::new(loopback(port)),
            envoy,
            capstan,
            upstreams,
            pods,
            cluster,
            namespace,
            log_dir,
        })
    }

    /// `kubectl apply` of `yaml` as the admin (a copy goes to the log dir as `<what>.yaml`).
    pub async fn apply(&self, what: &str, yaml: &str) -> anyhow::Result<()> {
        apply(self.cluster, &self.log_dir, what, yaml).await
    }

    /// Adds `pod` (started, and listed in a second EndpointSlice).
    pub async fn add_pod(&mut self, upstream_bin: &Path, pod: TestPod) -> anyhow::Result<TestPod> {
        self.upstreams
            .push(start_pod(upstream_bin, &pod, &self.log_dir).await?);
        let yaml = [
            pod_yaml(&self.namespace, &pod),
            endpoint_slice_yaml(
                &self.namespace,
                "reviews-2",
                std::slice::from_ref(&pod),
                &[],
            ),
        ]
        .join("---\n");
        self.apply("scale-up", &yaml).await?;
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// One request to `reviews` through Envoy.
    pub async fn reviews(&mut self, headers: &[(&str, &str)]) -> anyhow::Result<UpstreamReply> {
        self.proxy.reviews("reviews", headers).await
    }

    /// Which versions answer `n` requests.
    pub async fn versions(
        &mut self,
        headers: &[(&str, &str)],
        n: usize,
    ) -> anyhow::Result<BTreeMap<String, usize>> {
        self.proxy.reviews_versions(headers, n).await
    }

    /// Polls until `n` requests in a row with `headers` are answered exactly by `versions`
    /// (each at least once when `n` allows, none other).
    pub async fn wait_for_versions(
        &mut self,
        headers: &[(&str, &str)],
        versions: &[&str],
        n: usize,
    ) -> anyhow::Result<BTreeMap<String, usize>> {
        let what = format!("{n} requests with {headers:?} to reach exactly {versions:?}");
        let log_dir = self.log_dir.clone();
        wait_until(&what, CONFIG_TIMEOUT, async || {
            let counts = self.versions(headers, n).await?;
            let seen: Vec<&str> = counts.keys().map(String::as_str).collect();
            ensure!(seen == versions, "got {counts:?}");
            Ok(counts)
        })
        .await
        .with_context(|| format!("logs in {}", log_dir.display()))
    }

    /// The `Reconciled` condition of an Istio object in the test's namespace, as
    /// `(status, reason, message, observedGeneration)`; `None` while there is none.
    pub async fn condition(
        &self,
        resource: &str,
        name: &str,
    ) -> anyhow::Result<Option<(String, String, String, i64)>> {
        let json = self
            .cluster
            .kubectl(&["get", resource, name, "-n", &self.namespace, "-o", "json"])
            .await?;
        let object: serde_json::Value = serde_json::from_str(&json)?;
        Ok(reconciled(&object))
    }
}

/// The `Reconciled` condition of an object's JSON.
pub fn reconciled(object: &serde_json::Value) -> Option<(String, String, String, i64)> {
    let conditions = object.pointer("/status/conditions")?.as_array()?;
    let c = conditions
        .iter()
        .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Reconciled"))?;
    let text = |k: &str| {
        c.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let generation = c
        .get("observedGeneration")
        .and_then(|g| g.as_i64().or_else(|| g.as_str()?.parse().ok()))
        .unwrap_or(-1);
    Some((text("status"), text("reason"), text("message"), generation))
}

async fn start_pod(bin: &Path, pod: &TestPod, log_dir: &Path) -> anyhow::Result<Upstreams> {
    Upstreams::start(
        bin,
        &[("reviews", pod.reply.as_str(), pod.addr)],
        log_dir,
        &pod.name,
    )
    .await
}

async fn apply(
    cluster: &KubeCluster,
    log_dir: &Path,
    what: &str,
    yaml: &str,
) -> anyhow::Result<()> {
    let _ = std::fs::write(log_dir.join(format!("{what}.yaml")), yaml);
    cluster
        .kubectl_apply_yaml(yaml)
        .await
        .with_context(|| format!("kubectl apply of {what}"))?;
    Ok(())
}

pub fn service_yaml(namespace: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: {namespace}, labels: {{app: reviews}}}}
spec:
  selector: {{app: reviews}}
  ports:
  - {{name: http, port: {REVIEWS_PORT}, targetPort: {REVIEWS_PORT}}}
"
    )
}

pub fn pod_yaml(namespace: &str, pod: &TestPod) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{app: reviews, version: {version}}}
spec:
  serviceAccountName: bookinfo-reviews
  nodeName: node-a
  containers:
  - {{name: reviews, image: example.invalid/reviews:{version}}}
",
        name = pod.name,
        version = pod.version,
    )
}

/// An EndpointSlice of `reviews` listing `pods` as ready, and `not_ready` pods as not ready.
pub fn endpoint_slice_yaml(
    namespace: &str,
    name: &str,
    pods: &[TestPod],
    not_ready: &[TestPod],
) -> String {
    let mut endpoints = String::new();
    for (pod, ready) in pods
        .iter()
        .map(|p| (p, true))
        .chain(not_ready.iter().map(|p| (p, false)))
    {
        endpoints.push_str(&format!(
            "- addresses: [\"{ip}\"]
  conditions: {{ready: {ready}, serving: {ready}, terminating: false}}
  nodeName: node-a
  targetRef: {{kind: Pod, name: {pod}, namespace: {namespace}}}
",
            ip = pod.addr.ip(),
            pod = pod.name,
        ));
    }
    if endpoints.is_empty() {
        endpoints.push_str("[]\n");
    }
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: reviews}}
addressType: IPv4
ports:
- {{name: http, port: {REVIEWS_PORT}, protocol: TCP}}
endpoints:
{endpoints}"
    )
}

pub fn destination_rule_yaml(namespace: &str, versions: &[&str]) -> String {
    let subsets: String = versions
        .iter()
        .map(|v| format!("  - {{name: {v}, labels: {{version: {v}}}}}\n"))
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: {namespace}}}
spec:
  host: reviews
  subsets:
{subsets}"
    )
}

/// The `reviews` VirtualService with `http` (YAML list items, indented two spaces).
fn reviews_vs_yaml(namespace: &str, http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {namespace}}}
spec:
  hosts: [reviews]
  http:
{http}"
    )
}

/// `end-user: jason` → `matched`, everything else → `default`.
pub fn header_match_yaml(namespace: &str, matched: &str, default: &str) -> String {
    reviews_vs_yaml(
        namespace,
        &format!(
            "  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: {matched}}}}}]
  - route: [{{destination: {{host: reviews, subset: {default}}}}}]
"
        ),
    )
}

/// Everything to `version`.
pub fn all_to_yaml(namespace: &str, version: &str) -> String {
    reviews_vs_yaml(
        namespace,
        &format!("  - route: [{{destination: {{host: reviews, subset: {version}}}}}]\n"),
    )
}

/// What the chart grants capstan when Cloud Map's materialised mode is on
/// (`charts/capstan/templates/cloud-map.yaml`): ServiceEntries of the mesh namespace, written
/// and deleted; nothing elsewhere.
pub fn cloud_map_role_yaml(namespace: &str) -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: capstan-cloud-map, namespace: {namespace}}}
rules:
- apiGroups: [networking.istio.io]
  resources: [serviceentries]
  verbs: [get, list, watch, create, patch, update, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: capstan-cloud-map, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: capstan-cloud-map}}
subjects:
- {{kind: ServiceAccount, name: capstan, namespace: istio-system}}
"
    )
}
