//! `capstan explain --kubeconfig`: the decision read from a real API server's objects
//! (a Service, its Pod and EndpointSlice, AuthorizationPolicies applied with kubectl), the
//! rule named by its object and field.

use std::process::Command;

use anyhow::{Context, bail, ensure};
use capstan_e2e::kube::KubeCluster;
use capstan_e2e::kube_mesh::{TestPod, endpoint_slice_yaml, pod_yaml, service_yaml};

/// `capstan explain --kubeconfig <admin> <args>`: its output and whether it allows.
fn explain(cluster: &KubeCluster, args: &[&str]) -> anyhow::Result<(String, bool)> {
    let output = Command::new(capstan_e2e::locate::capstan_bin()?)
        .arg("explain")
        .arg("--kubeconfig")
        .arg(cluster.admin_kubeconfig())
        .args(args)
        .output()
        .context("running capstan explain")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    match output.status.code() {
        Some(0) => Ok((text, true)),
        Some(1) => Ok((text, false)),
        _ => bail!(
            "capstan explain {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_reads_the_cluster() -> anyhow::Result<()> {
    let cluster = KubeCluster::shared().await?;
    let ns = cluster.create_namespace("explain").await?;
    let pod = TestPod::new("v1");
    cluster.kubectl_apply_yaml(&service_yaml(&ns)).await?;
    cluster.kubectl_apply_yaml(&pod_yaml(&ns, &pod)).await?;
    cluster
        .kubectl_apply_yaml(&endpoint_slice_yaml(
            &ns,
            "reviews-1",
            std::slice::from_ref(&pod),
            &[],
        ))
        .await?;
    cluster
        .kubectl_apply_yaml(&format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/admin*]}}}}]}}]
"
        ))
        .await?;
    let to = format!("--to=reviews.{ns}.svc.cluster.local:9080");
    let from = format!("--from-outside={ns}");
    let (text, allowed) = explain(cluster, &[&from, &to, "--path", "/admin/users"])?;
    ensure!(!allowed, "/admin allowed:\n{text}");
    ensure!(
        text.contains(&format!("workload {}:9080", pod.addr.ip())),
        "the pod's address from the EndpointSlice:\n{text}"
    );
    ensure!(
        text.contains(&format!(
            "decision: DENY: a DENY rule matches it, ns[{ns}]-policy[deny-admin]-rule[0] \
             (AuthorizationPolicy {ns}/deny-admin spec.rules[0])"
        )),
        "the rule named by its object:\n{text}"
    );
    let (text, allowed) = explain(cluster, &[&from, &to, "--path", "/whoami"])?;
    ensure!(allowed, "/whoami denied:\n{text}");

    // The selector reads the pod's labels: relabelled, the policy no longer applies.
    cluster
        .kubectl(&[
            "label",
            "pod",
            "-n",
            &ns,
            &pod.name,
            "app=other",
            "--overwrite",
        ])
        .await?;
    let (text, allowed) = explain(cluster, &[&from, &to, "--path", "/admin/users"])?;
    ensure!(
        allowed,
        "the policy still selects a relabelled pod:\n{text}"
    );
    Ok(())
}
