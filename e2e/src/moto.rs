//! AWS Private CA and Cloud Map on loopback: moto 5.2.5, patched in-process by
//! `e2e/moto/capstan_moto.py` (installed by scripts/tools.sh into the tools venv), one server
//! per test, and a root Private CA created in it through the Rust SDK as an operator would
//! (Cloud Map: [`crate::cloudmap`]).
//!
//! Nothing here reaches beyond 127.0.0.1: the endpoint is the child's loopback port, the
//! region and the credentials are fixed, and the child runs with
//! `AWS_EC2_METADATA_DISABLED=true`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use aws_sdk_acmpca::Client;
use aws_sdk_acmpca::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_acmpca::primitives::Blob;
use aws_sdk_acmpca::types::{
    Asn1Subject, CertificateAuthorityConfiguration, CertificateAuthorityType, KeyAlgorithm,
    SigningAlgorithm, Validity, ValidityPeriodType,
};
use capstan_ca::pca::{PcaConfig, SdkConfig, sdk_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::HttpClient;
use crate::locate::{repo_dir, tools_dir};
use crate::ports::free_port;
use crate::process::ChildProcess;
use crate::wait_until;

/// moto's fixed region for these tests; any works, one keeps ARNs predictable.
pub const REGION: &str = "us-east-1";
const ROOT_TEMPLATE: &str = "arn:aws:acm-pca:::template/RootCACertificate/V1";

/// Faults the patched moto injects, from its start (see capstan_moto.py).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MotoFaults {
    /// Each new certificate answers RequestInProgressException to its first N polls.
    pub pending_polls: u32,
    /// The next N IssueCertificate calls are throttled; -1 throttles all of them.
    pub throttle_issues: i64,
    /// GetCertificate's chain stops below the root.
    pub chain_without_root: bool,
    /// The next N servicediscovery calls (any operation) are throttled; -1 throttles all.
    pub sd_throttle: i64,
}

/// A root Private CA, active, with its self-signed certificate.
#[derive(Debug, Clone)]
pub struct PcaRoot {
    pub arn: String,
    pub certificate_pem: String,
}

/// A running patched moto server; stopped on drop.
#[derive(Debug)]
pub struct Moto {
    process: ChildProcess,
    addr: SocketAddr,
}

/// The tools venv's Python, where scripts/tools.sh installed moto.
pub fn python() -> anyhow::Result<PathBuf> {
    let python = tools_dir().join("venv").join("bin").join("python");
    if !python.is_file() {
        bail!(
            "{} not found: run `make tools` (scripts/tools.sh) to install moto",
            python.display()
        );
    }
    Ok(python)
}

impl Moto {
    /// Starts moto on a free loopback port, logging to `<log_dir>/moto.log`, and waits until
    /// it answers.
    pub async fn start(log_dir: &Path, faults: &MotoFaults) -> anyhow::Result<Self> {
        let port = free_port()?;
        let script = repo_dir().join("e2e").join("moto").join("capstan_moto.py");
        let mut cmd = Command::new(python()?);
        cmd.arg(&script)
            .arg("--port")
            .arg(port.to_string())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("MOTO_PCA_PENDING_POLLS", faults.pending_polls.to_string())
            .env(
                "MOTO_PCA_THROTTLE_ISSUES",
                faults.throttle_issues.to_string(),
            )
            .env(
                "MOTO_PCA_CHAIN_WITHOUT_ROOT",
                if faults.chain_without_root { "1" } else { "0" },
            )
            .env("MOTO_SD_THROTTLE", faults.sd_throttle.to_string());
        let mut process = ChildProcess::spawn("moto", &mut cmd, &log_dir.join("moto.log"))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut client = HttpClient::new(addr);
        let ready = wait_until(
            "moto answers /moto-api/data.json",
            Duration::from_secs(30),
            async || {
                process.ensure_running()?;
                let resp = client.get("127.0.0.1", "/moto-api/data.json", &[]).await?;
                anyhow::ensure!(resp.status.is_success(), "status {}", resp.status);
                Ok(())
            },
        )
        .await;
        if let Err(e) = ready {
            return Err(e.context(format!("moto log:\n{}", process.log_tail(30))));
        }
        Ok(Self { process, addr })
    }

    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// A Private CA configuration for `ca_arn` served by this moto.
    pub fn pca_config(&self, ca_arn: &str) -> PcaConfig {
        let mut config = PcaConfig::new(ca_arn, REGION);
        config.endpoint_url = Some(self.endpoint_url());
        config.signing_algorithm = "SHA256WITHECDSA".into();
        config
    }

    /// The SDK configuration for this moto: static test credentials, so the credential
    /// chain (and its instance-metadata lookup) is never consulted.
    pub async fn sdk(&self) -> SdkConfig {
        let credentials = Credentials::new("testing", "testing", None, None, "capstan-e2e");
        // Only the region and endpoint of the config are used here, not the CA ARN.
        sdk_config(
            &self.pca_config(""),
            Some(SharedCredentialsProvider::new(credentials)),
        )
        .await
    }

    /// Changes the faults of the running server (keys as in [`MotoFaults`], JSON); returns
    /// the server's settings and call counters.
    pub async fn set_faults(
        &self,
        settings: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.faults_request("POST", &settings.to_string()).await
    }

    /// The server's fault settings and call counters (`counts.issue`, `counts.throttled`,
    /// `counts.get`, `counts.in_progress`; `counts.sd`, servicediscovery calls per operation,
    /// and `counts.sd_throttled`).
    pub async fn faults(&self) -> anyhow::Result<serde_json::Value> {
        self.faults_request("GET", "").await
    }

    async fn faults_request(&self, method: &str, body: &str) -> anyhow::Result<serde_json::Value> {
        let mut stream = TcpStream::connect(self.addr).await?;
        let request = format!(
            "{method} /capstan-moto/faults HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
            .await
            .context("moto's fault endpoint did not answer in 5 s")??;
        let Some((head, body)) = response.split_once("\r\n\r\n") else {
            bail!("malformed response from the fault endpoint: {response}");
        };
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            bail!("fault endpoint answered {head}: {body}");
        }
        serde_json::from_str(body).with_context(|| format!("fault endpoint body {body}"))
    }

    /// Creates a root Private CA with an EC P-256 key, self-signed with RootCACertificate/V1
    /// for `validity_days`, imported and ACTIVE: the steps an operator runs with the CLI.
    pub async fn create_root_ca(
        &self,
        common_name: &str,
        validity_days: i64,
    ) -> anyhow::Result<PcaRoot> {
        let client = Client::new(&self.sdk().await);
        let subject = Asn1Subject::builder().common_name(common_name).build();
        let configuration = CertificateAuthorityConfiguration::builder()
            .key_algorithm(KeyAlgorithm::EcPrime256v1)
            .signing_algorithm(SigningAlgorithm::Sha256Withecdsa)
            .subject(subject)
            .build()?;
        let arn = client
            .create_certificate_authority()
            .certificate_authority_type(CertificateAuthorityType::Root)
            .certificate_authority_configuration(configuration)
            .send()
            .await
            .context("CreateCertificateAuthority")?
            .certificate_authority_arn()
            .context("no CertificateAuthorityArn")?
            .to_string();
        let csr = client
            .get_certificate_authority_csr()
            .certificate_authority_arn(&arn)
            .send()
            .await
            .context("GetCertificateAuthorityCsr")?
            .csr()
            .context("no Csr")?
            .to_string();
        let validity = Validity::builder()
            .r#type(ValidityPeriodType::Days)
            .value(validity_days)
            .build()?;
        let cert_arn = client
            .issue_certificate()
            .certificate_authority_arn(&arn)
            .csr(Blob::new(csr.into_bytes()))
            .signing_algorithm(SigningAlgorithm::Sha256Withecdsa)
            .template_arn(ROOT_TEMPLATE)
            .validity(validity)
            .send()
            .await
            .context("IssueCertificate (root)")?
            .certificate_arn()
            .context("no CertificateArn")?
            .to_string();
        let certificate_pem = client
            .get_certificate()
            .certificate_authority_arn(&arn)
            .certificate_arn(&cert_arn)
            .send()
            .await
            .context("GetCertificate (root)")?
            .certificate()
            .context("no Certificate")?
            .to_string();
        client
            .import_certificate_authority_certificate()
            .certificate_authority_arn(&arn)
            .certificate(Blob::new(certificate_pem.clone().into_bytes()))
            .send()
            .await
            .context("ImportCertificateAuthorityCertificate")?;
        Ok(PcaRoot {
            arn,
            certificate_pem,
        })
    }
}
