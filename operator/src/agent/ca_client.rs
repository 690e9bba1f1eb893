//! One `CreateCertificate` call to the CA over TLS, authenticated by the workload's token.

use std::time::Duration;

use capstan_ca::api::{IstioCertificateClient, IstioCertificateRequest};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use super::chain::PemCert;
use super::{AgentArgs, AgentError, read_bounded};

/// Largest token file read (a projected service-account token is about 1 KiB).
pub const MAX_TOKEN_FILE: u64 = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks the CA to sign `csr_pem`, trusting `roots` for its server certificate (the roots are
/// re-read for every call, so the connection is made anew too). Returns the chain as sent.
pub async fn create_certificate(
    args: &AgentArgs,
    roots: &[PemCert],
    csr_pem: &str,
) -> Result<Vec<String>, AgentError> {
    let token = read_token(args).await?;
    let mut tls = ClientTlsConfig::new().domain_name(args.ca_server_name.clone());
    for root in roots {
        tls = tls.ca_certificate(Certificate::from_pem(&root.pem));
    }
    let endpoint = Endpoint::from_shared(args.ca_address.clone())
        .map_err(|e| AgentError::Config(format!("--ca-address {:?}: {e}", args.ca_address)))?
        .tls_config(tls)
        .map_err(|e| AgentError::Connect(error_chain(&e)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| AgentError::Connect(error_chain(&e)))?;
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: csr_pem.to_string(),
        validity_duration: i64::try_from(args.cert_ttl.as_secs()).unwrap_or(i64::MAX),
        metadata: None,
    });
    request.metadata_mut().insert("authorization", token);
    let response = IstioCertificateClient::new(channel)
        .create_certificate(request)
        .await
        .map_err(AgentError::Ca)?;
    Ok(response.into_inner().cert_chain)
}

/// The `authorization` value for the token in the token file. The token itself never goes
/// into an error or a log line.
async fn read_token(args: &AgentArgs) -> Result<MetadataValue<tonic::metadata::Ascii>, AgentError> {
    let text = read_bounded(&args.token_file, MAX_TOKEN_FILE).await?;
    let token = text.trim();
    if token.is_empty() {
        return Err(AgentError::File(
            args.token_file.clone(),
            "the token file is empty".into(),
        ));
    }
    format!("Bearer {token}").parse().map_err(|_| {
        AgentError::File(
            args.token_file.clone(),
            "the token holds characters a header cannot carry".into(),
        )
    })
}

/// An error and its sources on one line (tonic's transport errors say little on their own).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
