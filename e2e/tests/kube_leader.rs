//! Leader election between two capstan processes against a real kube-apiserver: both serve,
//! the elected one writes status, and when it dies the other takes over. A binary of its own:
//! its two replicas write status cluster-wide, which would race any other status writer.

use anyhow::ensure;
use capstan_e2e::capstan::Capstan;
use capstan_e2e::kube::KubeCluster;
use capstan_e2e::kube_mesh::{destination_rule_yaml, reconciled};
use capstan_e2e::mesh::CONFIG_TIMEOUT;
use capstan_e2e::wait_until;

/// Two replicas: both serve, the elected one writes status; when it dies without a word
/// (SIGKILL), the other takes the Lease within its duration and writes from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_moves_status_writing() -> anyhow::Result<()> {
    let name = "leader_failover_moves_status_writing";
    let log_dir = capstan_e2e::locate::fresh_log_dir(name)?;
    let cluster = KubeCluster::shared().await?;
    let ns = cluster.create_namespace("failover").await?;
    const LEASE_SECS: u64 = 4;
    let args = |id: &'static str| {
        [
            "--identity".to_string(),
            id.to_string(),
            "--lease-duration-secs".to_string(),
            LEASE_SECS.to_string(),
        ]
    };
    let holder = async || -> anyhow::Result<String> {
        cluster
            .kubectl(&[
                "get",
                "lease",
                "capstan-leader",
                "-n",
                "istio-system",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .await
    };
    let a_args = args("capstan-a");
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let mut a =
        Capstan::start_kube(cluster.capstan_kubeconfig(), &a_args, &log_dir, "capstan-a").await?;
    wait_until("capstan-a to lead", CONFIG_TIMEOUT, async || {
        let h = holder().await?;
        ensure!(h == "capstan-a", "holder: {h:?}");
        Ok(())
    })
    .await?;
    let b_args = args("capstan-b");
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let b =
        Capstan::start_kube(cluster.capstan_kubeconfig(), &b_args, &log_dir, "capstan-b").await?;
    // Both serve: each answers /readyz.
    a.monitoring_get("/readyz").await?;
    b.monitoring_get("/readyz").await?;

    let condition = async |generation: i64, reason: &str| -> anyhow::Result<()> {
        let what = format!("condition {reason} for generation {generation}");
        wait_until(&what, CONFIG_TIMEOUT, async || {
            let json = cluster
                .kubectl(&["get", "destinationrule", "reviews", "-n", &ns, "-o", "json"])
                .await?;
            let c = reconciled(&serde_json::from_str(&json)?);
            match c {
                Some(c) if c.1 == reason && c.3 == generation => Ok(()),
                other => anyhow::bail!("condition so far: {other:?}"),
            }
        })
        .await
    };
    // Duplicate subset names: valid for the schema, invalid for Istio.
    let invalid = format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: {ns}}}
spec:
  host: reviews
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v1, labels: {{version: v2}}}}]
"
    );
    cluster.kubectl_apply_yaml(&invalid).await?;
    condition(1, "Invalid").await?;

    a.process.kill();
    let killed = std::time::Instant::now();
    // The Lease expires LEASE_SECS after its last renewal; the standby retries every
    // 2/15 of that, with jitter.
    wait_until(
        "capstan-b to take the Lease",
        std::time::Duration::from_secs(3 * LEASE_SECS),
        async || {
            let h = holder().await?;
            ensure!(h == "capstan-b", "holder: {h:?}");
            Ok(())
        },
    )
    .await?;
    eprintln!(
        "capstan-b took over {:?} after capstan-a was killed",
        killed.elapsed()
    );
    cluster
        .kubectl_apply_yaml(&destination_rule_yaml(&ns, &["v1", "v2"]))
        .await?;
    condition(2, "Accepted").await?;
    let writes_by_b = b.process.log_lines(|l| l.contains("leader"));
    ensure!(!writes_by_b.is_empty(), "capstan-b never logged leadership");
    Ok(())
}
