//! The workload identity path on a real cluster, for `tests/identity_kube.rs`: ServiceAccounts
//! and tokens made by the apiserver, the mesh root read from `istio-system/istio-ca-secret`,
//! `capstan agent`s asking the real capstan (its TLS port: the CA and xDS) for certificates,
//! the admin API of an Envoy an agent started, and `openssl` checks of what an Envoy holds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use serde_json::Value;

pub use crate::agent::bootstrap_file;
use crate::agent::{Agent, AgentSpec, AgentTarget};
use crate::capstan::Capstan;
use crate::envoy::{ENVOY_START_TIMEOUT, loopback, parse_stats};
use crate::http::{HttpClient, HttpResponse, percent_encode};
use crate::kube::KubeCluster;
use crate::kube_mesh::{TestPod, endpoint_slice_yaml, pod_yaml, service_yaml};
use crate::netns;
use crate::process::ChildProcess;
use crate::upstreams::Upstreams;
use crate::wait::wait_until;

/// The audience capstan's CA accepts tokens for (Istio's agent asks for it too).
pub const CA_AUDIENCE: &str = "istio-ca";
/// A name on capstan's serving certificate (its default `--xds-tls-dns-names` include it).
pub const SERVER_NAME: &str = "localhost";
/// The Secret capstan keeps its built-in root in, in `istio-system`.
pub const CA_SECRET: &str = "istio-ca-secret";

/// `spiffe://cluster.local/ns/<namespace>/sa/<service_account>`.
pub fn spiffe_uri(namespace: &str, service_account: &str) -> String {
    format!("spiffe://cluster.local/ns/{namespace}/sa/{service_account}")
}

/// `kubectl create serviceaccount <name> -n <namespace>` as admin.
pub async fn create_service_account(
    kube: &KubeCluster,
    namespace: &str,
    name: &str,
) -> anyhow::Result<()> {
    kube.kubectl(&["create", "serviceaccount", name, "-n", namespace])
        .await?;
    Ok(())
}

/// A token for ServiceAccount `namespace/name` with `audience`, from a TokenRequest
/// (`kubectl create token`), as a kubelet projects it into a pod.
pub async fn token(
    kube: &KubeCluster,
    namespace: &str,
    name: &str,
    audience: &str,
) -> anyhow::Result<String> {
    let out = kube
        .kubectl(&[
            "create",
            "token",
            name,
            "-n",
            namespace,
            "--audience",
            audience,
        ])
        .await?;
    let token = out.trim().to_string();
    ensure!(
        token.split('.').count() == 3,
        "kubectl create token did not print a JWT"
    );
    Ok(token)
}

/// The PEM under `key` (`ca-cert.pem`, `root-cert.pem`) of `istio-system/istio-ca-secret`,
/// read as admin.
pub async fn ca_secret_pem(kube: &KubeCluster, key: &str) -> anyhow::Result<String> {
    let template = format!("go-template={{{{index .data \"{key}\" | base64decode}}}}");
    let pem = kube
        .kubectl(&[
            "get",
            "secret",
            CA_SECRET,
            "-n",
            "istio-system",
            "-o",
            &template,
        ])
        .await
        .with_context(|| format!("reading {key} of istio-system/{CA_SECRET}"))?;
    ensure!(
        pem.contains("-----BEGIN CERTIFICATE-----"),
        "{key} of istio-system/{CA_SECRET} is not a PEM certificate: {pem:?}"
    );
    Ok(pem)
}

/// The real capstan's TLS port as agents reach it, and the roots they trust.
#[derive(Debug, Clone)]
pub struct CapstanTls {
    /// `127.0.0.1:<xds_tls_port>`: the CA and ADS over TLS.
    pub addr: SocketAddr,
    /// `root-cert.pem` of istio-ca-secret (the trust bundle), for `--ca-root-cert`.
    pub roots_file: PathBuf,
    /// `ca-cert.pem` of istio-ca-secret: the root that signs workloads.
    pub root_pem: String,
    /// The same root, as a file for `openssl verify`.
    pub root_file: PathBuf,
}

impl CapstanTls {
    /// capstan's TLS port as an agent's CA and xDS server.
    pub fn target(&self) -> AgentTarget {
        AgentTarget {
            ca_url: format!("https://{}", self.addr),
            roots_file: self.roots_file.clone(),
            server_name: SERVER_NAME.to_string(),
            xds_address: self.addr.to_string(),
        }
    }

    /// Reads the root capstan keeps in istio-ca-secret (capstan creates it before it listens)
    /// and writes `<dir>/mesh-roots.pem` and `<dir>/mesh-root.pem`.
    pub async fn of(capstan: &Capstan, kube: &KubeCluster, dir: &Path) -> anyhow::Result<Self> {
        let bundle = ca_secret_pem(kube, "root-cert.pem").await?;
        let root_pem = ca_secret_pem(kube, "ca-cert.pem").await?;
        let roots_file = dir.join("mesh-roots.pem");
        let root_file = dir.join("mesh-root.pem");
        std::fs::write(&roots_file, &bundle)
            .with_context(|| format!("writing {}", roots_file.display()))?;
        std::fs::write(&root_file, &root_pem)
            .with_context(|| format!("writing {}", root_file.display()))?;
        Ok(Self {
            addr: loopback(capstan.xds_tls_port),
            roots_file,
            root_pem,
            root_file,
        })
    }
}

/// One agent against the real capstan.
#[derive(Debug, Clone)]
pub struct KubeAgentSpec<'a> {
    /// Names its files in the log dir: `<name>.log`, `.sock`, `.token`, `.bootstrap.json`.
    pub name: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
    /// Written to the token file.
    pub token: &'a str,
    /// More arguments, last (e.g. `--envoy-bin`, `--`, Envoy's own).
    pub extra_args: &'a [&'a str],
}

/// Starts `capstan agent` for `spec` with capstan's TLS port as its CA and xDS server
/// (server name `localhost`), Envoy admin on a port Envoy picks, and returns at once (see
/// [`start_agent`] to wait for a certificate).
pub fn spawn_agent(
    capstan_bin: &Path,
    capstan: &CapstanTls,
    dir: &Path,
    spec: &KubeAgentSpec<'_>,
) -> anyhow::Result<Agent> {
    let mut extra_args = vec!["--admin-port", "0"];
    extra_args.extend_from_slice(spec.extra_args);
    Agent::spawn(
        capstan_bin,
        &capstan.target(),
        dir,
        &agent_spec(spec, &extra_args),
    )
}

/// [`spawn_agent`], then waits until the agent serves its first certificate.
pub async fn start_agent(
    capstan_bin: &Path,
    capstan: &CapstanTls,
    dir: &Path,
    spec: &KubeAgentSpec<'_>,
) -> anyhow::Result<Agent> {
    let mut extra_args = vec!["--admin-port", "0"];
    extra_args.extend_from_slice(spec.extra_args);
    Agent::start(
        capstan_bin,
        &capstan.target(),
        dir,
        &agent_spec(spec, &extra_args),
    )
    .await
}

fn agent_spec<'a>(spec: &KubeAgentSpec<'a>, extra_args: &'a [&'a str]) -> AgentSpec<'a> {
    AgentSpec {
        name: spec.name,
        trust_domain: "cluster.local",
        namespace: spec.namespace,
        service_account: spec.service_account,
        token: spec.token,
        cert_ttl: "1h",
        extra_args,
    }
}

/// Agent arguments making it run `envoy_bin` on its bootstrap once it has a certificate,
/// Envoy writing its admin address to `admin_address_file` (several Envoys side by side:
/// no hot restart, one worker).
pub fn envoy_args(envoy_bin: &str, admin_address_file: &str) -> Vec<String> {
    [
        "--envoy-bin",
        envoy_bin,
        "--",
        "--admin-address-path",
        admin_address_file,
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "--log-level",
        "info",
        "--drain-time-s",
        "1",
    ]
    .map(str::to_string)
    .to_vec()
}

/// The admin API of an Envoy (one an agent started, say).
#[derive(Debug, Clone, Copy)]
pub struct EnvoyAdmin {
    pub addr: SocketAddr,
}

impl EnvoyAdmin {
    /// Waits for the admin address Envoy writes to `address_file`; fails early if `owner`
    /// (the agent running Envoy) exits.
    pub async fn wait(address_file: &Path, owner: &mut ChildProcess) -> anyhow::Result<Self> {
        let addr = wait_until("Envoy's admin address", ENVOY_START_TIMEOUT, async || {
            owner.ensure_running()?;
            let text = std::fs::read_to_string(address_file)
                .with_context(|| format!("reading {}", address_file.display()))?;
            text.trim()
                .parse::<SocketAddr>()
                .with_context(|| format!("parsing {text:?}"))
        })
        .await?;
        Ok(Self { addr })
    }

    /// GET an admin path, requiring 200.
    pub async fn get(&self, path: &str) -> anyhow::Result<HttpResponse> {
        let resp = HttpClient::new(self.addr)
            .get(&self.addr.to_string(), path, &[])
            .await?;
        ensure!(resp.status.is_success(), "admin {path}: {}", resp.status);
        Ok(resp)
    }

    /// Counters and gauges matching the regex `filter`.
    pub async fn stats(&self, filter: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        let path = format!("/stats?filter={}", percent_encode(filter));
        Ok(parse_stats(&self.get(&path).await?.text()))
    }

    /// The port `listener` is bound to; an error while it is not (yet).
    pub async fn listener_port(&self, listener: &str) -> anyhow::Result<u16> {
        let v: Value = self.get("/listeners?format=json").await?.json()?;
        let port = v["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == listener)
            .and_then(|s| s["local_address"]["socket_address"]["port_value"].as_u64())
            .with_context(|| format!("no listener {listener} yet"))?;
        ensure!(port != 0, "listener {listener} not bound yet");
        Ok(u16::try_from(port)?)
    }
}

/// The SPIFFE URIs of the certificates an Envoy presents (its `/certs`, `cert_chain`).
pub fn presented_uris(certs: &Value) -> Vec<String> {
    let mut uris: Vec<String> = certs["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["cert_chain"].as_array().into_iter().flatten())
        .flat_map(|c| c["subject_alt_names"].as_array().into_iter().flatten())
        .filter_map(|san| san["uri"].as_str().map(str::to_string))
        .collect();
    uris.sort();
    uris.dedup();
    uris
}

/// The base64 `certificate_chain` of the dynamic secret `name` in an Envoy's `/config_dump`
/// (what SDS delivered; the private key is redacted there).
pub fn secret_chain_base64(config_dump: &Value, name: &str) -> anyhow::Result<String> {
    let secrets: Vec<&Value> = config_dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["dynamic_active_secrets"].as_array().into_iter().flatten())
        .collect();
    let secret = secrets
        .iter()
        .find(|s| s["name"] == name)
        .with_context(|| {
            let names: Vec<&Value> = secrets.iter().map(|s| &s["name"]).collect();
            format!("no active secret {name} in config_dump (has {names:?})")
        })?;
    secret["secret"]["tls_certificate"]["certificate_chain"]["inline_bytes"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("secret {name} has no inline certificate chain: {secret}"))
}

/// The certificates of a PEM bundle, each as its own PEM block.
pub fn pem_blocks(pem: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    pem.split_inclusive(END)
        .filter_map(|part| {
            let start = part.find("-----BEGIN CERTIFICATE-----")?;
            part.ends_with(END).then(|| format!("{}\n", &part[start..]))
        })
        .collect()
}

/// What `openssl` says about a presented chain (leaf first).
#[derive(Debug)]
pub struct VerifiedChain {
    /// The leaf's URI SANs, from `openssl x509 -ext subjectAltName`.
    pub uris: Vec<String>,
    /// `openssl verify`'s output.
    pub verify_output: String,
}

/// Checks with `openssl verify` that the first certificate of `chain_pem` chains to the root
/// in `root_file` (the rest of the chain as untrusted intermediates), and reads the leaf's
/// URI SANs. Files go to `<dir>/<name>-leaf.pem` and `<name>-intermediates.pem`.
pub fn openssl_verify(
    root_file: &Path,
    chain_pem: &str,
    dir: &Path,
    name: &str,
) -> anyhow::Result<VerifiedChain> {
    let blocks = pem_blocks(chain_pem);
    let (leaf, intermediates) = blocks
        .split_first()
        .context("the chain has no certificate")?;
    let leaf_file = dir.join(format!("{name}-leaf.pem"));
    std::fs::write(&leaf_file, leaf)?;
    let mut verify = Command::new("openssl");
    verify.arg("verify").arg("-CAfile").arg(root_file);
    if !intermediates.is_empty() {
        let file = dir.join(format!("{name}-intermediates.pem"));
        std::fs::write(&file, intermediates.concat())?;
        verify.arg("-untrusted").arg(file);
    }
    let out = verify
        .arg(&leaf_file)
        .output()
        .context("running openssl verify")?;
    let verify_output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "openssl verify -CAfile {} {}: {}",
            root_file.display(),
            leaf_file.display(),
            verify_output.trim()
        );
    }
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&leaf_file)
        .output()
        .context("running openssl x509")?;
    ensure!(
        out.status.success(),
        "openssl x509: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let uris = text
        .split([',', '\n'])
        .filter_map(|s| s.trim().strip_prefix("URI:").map(str::to_string))
        .collect();
    Ok(VerifiedChain {
        uris,
        verify_output,
    })
}

/// The value of one series (`name{labels}` exactly as exposed) in Prometheus text; `None` if
/// it is not exposed.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

/// The `reviews` Service of [`crate::kube_mesh`] in `namespace`: three pods (v1, v2, v3),
/// each a `capstan-upstream` on its pod address, listed ready in one EndpointSlice.
pub struct ReviewsPods {
    pub pods: Vec<TestPod>,
    pub upstreams: Vec<Upstreams>,
}

impl ReviewsPods {
    /// Starts the pods and applies the Service, Pods and EndpointSlice (a copy goes to
    /// `<log_dir>/reviews.yaml`). Needs the binary's private network
    /// (`capstan_e2e::private_network!()`).
    pub async fn start(
        kube: &KubeCluster,
        namespace: &str,
        upstream_bin: &Path,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        netns::pod_network()?;
        let pods: Vec<TestPod> = ["v1", "v2", "v3"].iter().map(|v| TestPod::new(v)).collect();
        let mut upstreams = Vec::new();
        for pod in &pods {
            let instance = [("reviews", pod.reply.as_str(), pod.addr)];
            upstreams.push(Upstreams::start(upstream_bin, &instance, log_dir, &pod.name).await?);
        }
        let mut yaml = vec![
            service_yaml(namespace),
            endpoint_slice_yaml(namespace, "reviews-1", &pods, &[]),
        ];
        yaml.extend(pods.iter().map(|p| pod_yaml(namespace, p)));
        let yaml = yaml.join("---\n");
        let _ = std::fs::write(log_dir.join("reviews.yaml"), &yaml);
        kube.kubectl_apply_yaml(&yaml)
            .await
            .context("kubectl apply of the reviews Service")?;
        Ok(Self { pods, upstreams })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_uris_secrets_pem_blocks_and_metrics() {
        let certs = serde_json::json!({"certificates": [
            {"ca_cert": [{"subject_alt_names": [{"uri": "spiffe://ca"}]}],
             "cert_chain": [{"subject_alt_names": [{"uri": "spiffe://cluster.local/ns/a/sa/b"}, {"dns": "x"}]}]},
            {"cert_chain": [{"subject_alt_names": [{"uri": "spiffe://cluster.local/ns/a/sa/b"}]}]},
        ]});
        assert_eq!(presented_uris(&certs), ["spiffe://cluster.local/ns/a/sa/b"]);

        let dump = serde_json::json!({"configs": [{"dynamic_active_secrets": [
            {"name": "ROOTCA", "secret": {"validation_context": {}}},
            {"name": "default", "secret": {"tls_certificate": {"certificate_chain": {"inline_bytes": "QUJD"}}}},
        ]}]});
        assert_eq!(secret_chain_base64(&dump, "default").unwrap(), "QUJD");
        assert!(secret_chain_base64(&dump, "other").is_err());

        let pem = "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n\
                   -----BEGIN CERTIFICATE-----\nBB\n-----END CERTIFICATE-----\n";
        let blocks = pem_blocks(pem);
        assert_eq!(blocks.len(), 2);
        assert!(blocks[1].contains("BB") && !blocks[1].contains("AA"));

        let text = "# HELP x\ncapstan_a_total 3\ncapstan_b_total{reason=\"r\"} 2\n";
        assert_eq!(metric(text, "capstan_a_total"), Some(3.0));
        assert_eq!(metric(text, "capstan_b_total{reason=\"r\"}"), Some(2.0));
        assert_eq!(metric(text, "capstan_b_total"), None);
    }
}
