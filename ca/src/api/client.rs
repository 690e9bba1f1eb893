//! The client side of `IstioCertificateService` (what `capstan agent` uses).

use tonic::codegen::{Body, Bytes, StdError, http};

use super::{CREATE_CERTIFICATE_PATH, IstioCertificateRequest, IstioCertificateResponse};

/// A `CreateCertificate` client over any gRPC transport (a tonic `Channel` in practice).
#[derive(Debug, Clone)]
pub struct IstioCertificateClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> IstioCertificateClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    pub fn new(inner: T) -> Self {
        Self {
            inner: tonic::client::Grpc::new(inner),
        }
    }

    /// Sends one request; put the bearer token in the request's `authorization` metadata.
    pub async fn create_certificate(
        &mut self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("CA not ready: {}", e.into())))?;
        let path = http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE_PATH);
        self.inner
            .unary(request, path, tonic_prost::ProstCodec::default())
            .await
    }
}
