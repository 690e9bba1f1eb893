//! The objects of `capstan-kube-bench`: per service a Service, an EndpointSlice of
//! [`ENDPOINTS`] endpoints (data only: nothing connects to them), a DestinationRule and a
//! VirtualService, spread over [`NAMESPACES`] namespaces and created in bulk.

use anyhow::ensure;
use capstan_e2e::kube::{KubeCluster, KubeUser, kubectl_bin};
use tokio::task::JoinSet;

use crate::{ENDPOINTS, NAMESPACES};

/// The namespace of service `i` (and of proxy `i`).
pub fn namespace(i: usize) -> String {
    format!("ns-{}", i % NAMESPACES)
}

/// Endpoint `j` of service `i`, in 10.244.0.0/16.
pub fn address(i: usize, j: usize) -> String {
    let k = i * ENDPOINTS + j;
    format!("10.244.{}.{}", (k / 250) % 256, k % 250 + 1)
}

fn objects_of(i: usize) -> String {
    let ns = namespace(i);
    let endpoints: String = (0..ENDPOINTS)
        .map(|j| {
            format!(
                "- addresses: [\"{}\"]\n  conditions: {{ready: true}}\n",
                address(i, j)
            )
        })
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: svc-{i}, namespace: {ns}}}
spec:
  selector: {{app: svc-{i}}}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-{i}-abcde
  namespace: {ns}
  labels: {{kubernetes.io/service-name: svc-{i}, endpointslice.kubernetes.io/managed-by: capstan-kube-bench}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc-{i}, namespace: {ns}}}
spec:
  host: svc-{i}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc-{i}, namespace: {ns}}}
spec:
  hosts: [svc-{i}]
  http:
  - match:
    - headers: {{end-user: {{exact: jason}}}}
    route:
    - destination: {{host: svc-{i}, subset: v2}}
  - route:
    - destination: {{host: svc-{i}, subset: v1}}
      weight: 90
    - destination: {{host: svc-{i}, subset: v2}}
      weight: 10
---
"
    )
}

/// Creates the namespaces and the objects of `services` services, a `kubectl create -f` per
/// namespace in parallel (with a ServiceCIDR that makes room for them).
pub async fn create(cluster: &KubeCluster, services: usize) -> anyhow::Result<()> {
    // The harness's Service range is a /24; a second ServiceCIDR makes room for the rest.
    cluster
        .kubectl_apply_yaml(
            "apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kube-bench}
spec: {cidrs: [10.96.0.0/16]}
",
        )
        .await?;
    let dir = cluster.state_dir().join("kube-bench");
    std::fs::create_dir_all(&dir)?;
    let mut namespaces = String::new();
    for n in 0..NAMESPACES {
        namespaces.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{n}}}\n---\n"
        ));
    }
    cluster.kubectl_apply_yaml(&namespaces).await?;
    // Wait until the ServiceCIDR is usable: a Service of the first namespace gets an IP.
    let mut files = Vec::new();
    for n in 0..NAMESPACES {
        let yaml: String = (0..services)
            .filter(|i| i % NAMESPACES == n)
            .map(objects_of)
            .collect();
        let path = dir.join(format!("ns-{n}.yaml"));
        std::fs::write(&path, yaml)?;
        files.push(path);
    }
    let mut tasks = JoinSet::new();
    for path in files {
        let kubeconfig = cluster.kubeconfig(KubeUser::Admin).to_path_buf();
        tasks.spawn(async move {
            let out = tokio::process::Command::new(kubectl_bin()?)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["create", "-o", "name", "-f"])
                .arg(&path)
                .output()
                .await?;
            ensure!(
                out.status.success(),
                "kubectl create -f {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok::<usize, anyhow::Error>(out.stdout.split(|b| *b == b'\n').count() - 1)
        });
    }
    let mut created = 0;
    while let Some(result) = tasks.join_next().await {
        created += result??;
    }
    ensure!(
        created == services * 4,
        "created {created} objects, expected {}",
        services * 4
    );
    Ok(())
}
