//! Istio's CSR API, `istio.v1.auth.IstioCertificateService`, with the same package, service,
//! method and field numbers as Istio's `security/v1alpha1/ca.proto`, so Istio's own agent and
//! capstan's talk to the same server. Written by hand rather than generated: it is one unary
//! method, and generating it would need `protoc` at build time.

mod client;
mod server;

pub use client::IstioCertificateClient;
pub use server::{CreateCertificate, IstioCertificateServer};

/// The gRPC service name, as Istio's proto declares it.
pub const SERVICE_NAME: &str = "istio.v1.auth.IstioCertificateService";
/// The full path of the one method.
pub const CREATE_CERTIFICATE_PATH: &str =
    "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// A certificate request. The caller's identity comes from its credentials (a bearer token in
/// the `authorization` metadata), never from the CSR.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded PKCS#10 certification request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested validity in seconds; the server caps it.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Optional metadata (Istio uses it for impersonation by trusted nodes; capstan ignores it).
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<envoy_types::pb::google::protobuf::Struct>,
}

/// The issued certificate chain: the leaf first, the root last, each PEM-encoded.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct IstioCertificateResponse {
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

#[cfg(test)]
mod tests;
