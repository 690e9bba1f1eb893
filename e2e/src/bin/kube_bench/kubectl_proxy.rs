//! `kubectl proxy`: plaintext HTTP to the apiserver, so that a round's PATCH is one HTTP
//! round trip (timed) and nothing else.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use capstan_e2e::bench::server::http;
use capstan_e2e::kube::{KubeCluster, KubeUser, kubectl_bin};
use capstan_e2e::process::ChildProcess;

use crate::policy;
use crate::{CHANGED_NS, CHANGED_SLICE};

/// A `kubectl proxy` to the cluster's apiserver, as its admin, on a loopback port.
pub struct KubectlProxy {
    process: ChildProcess,
    addr: SocketAddr,
}

impl KubectlProxy {
    /// Starts it; [`KubectlProxy::wait_ready`] waits until it serves.
    pub fn start(cluster: &KubeCluster) -> anyhow::Result<Self> {
        let port = capstan_e2e::ports::free_port()?;
        let mut cmd = Command::new(kubectl_bin()?);
        cmd.arg("--kubeconfig")
            .arg(cluster.kubeconfig(KubeUser::Admin))
            .args(["proxy", "--address=127.0.0.1"])
            .arg(format!("--port={port}"));
        let process = ChildProcess::spawn(
            "kubectl-proxy",
            &mut cmd,
            &cluster.log_dir().join("kubectl-proxy.log"),
        )?;
        Ok(Self {
            process,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http(self.addr, "GET", "/readyz", None, "").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("kubectl proxy not ready: {}", self.process.log_tail(10));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sets the port of the changed EndpointSlice; returns the PATCH's round trip.
    pub async fn set_slice_port(&self, port: u32) -> anyhow::Result<Duration> {
        let path = format!(
            "/apis/discovery.k8s.io/v1/namespaces/{CHANGED_NS}/endpointslices/{CHANGED_SLICE}"
        );
        let body = format!(r#"[{{"op":"replace","path":"/ports/0/port","value":{port}}}]"#);
        let t = Instant::now();
        let (status, text) = http(
            self.addr,
            "PATCH",
            &path,
            Some("application/json-patch+json"),
            &body,
        )
        .await?;
        let took = t.elapsed();
        ensure!(status == 200, "PATCH {path}: {status} {text}");
        Ok(took)
    }

    /// Makes edit `n` of the benchmark's AuthorizationPolicy; returns the PATCH's round trip.
    pub async fn edit_policy(&self, n: u64) -> anyhow::Result<Duration> {
        let (path, body) = policy::patch(n);
        let t = Instant::now();
        let (status, text) = http(
            self.addr,
            "PATCH",
            &path,
            Some("application/merge-patch+json"),
            &body,
        )
        .await?;
        let took = t.elapsed();
        ensure!(status == 200, "PATCH {path}: {status} {text}");
        Ok(took)
    }
}
