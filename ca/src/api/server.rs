//! The server side of `IstioCertificateService`: a tower service routing the one method to a
//! [`CreateCertificate`] implementation (the shape tonic's generator would produce).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::{BoxFuture, Service, StdError, http};

use super::{CREATE_CERTIFICATE_PATH, IstioCertificateRequest, IstioCertificateResponse};

/// Largest request decoded: a CSR is bounded far below this ([`crate::MAX_CSR_PEM`]), plus
/// metadata.
const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// What answers `CreateCertificate`.
pub trait CreateCertificate: Send + Sync + 'static {
    fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> impl Future<Output = Result<tonic::Response<IstioCertificateResponse>, tonic::Status>> + Send;
}

/// `IstioCertificateService` over `T`, to add to a tonic server.
#[derive(Debug)]
pub struct IstioCertificateServer<T> {
    inner: Arc<T>,
}

impl<T> IstioCertificateServer<T> {
    pub fn new(inner: T) -> Self {
        Self::from_arc(Arc::new(inner))
    }

    pub fn from_arc(inner: Arc<T>) -> Self {
        Self { inner }
    }
}

impl<T> Clone for IstioCertificateServer<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> tonic::server::NamedService for IstioCertificateServer<T> {
    const NAME: &'static str = super::SERVICE_NAME;
}

struct Unary<T>(Arc<T>);

impl<T: CreateCertificate> tonic::server::UnaryService<IstioCertificateRequest> for Unary<T> {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<tonic::Response<IstioCertificateResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<IstioCertificateRequest>) -> Self::Future {
        let inner = Arc::clone(&self.0);
        Box::pin(async move { inner.create_certificate(request).await })
    }
}

impl<T, B> Service<http::Request<B>> for IstioCertificateServer<T>
where
    T: CreateCertificate,
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != CREATE_CERTIFICATE_PATH {
            return Box::pin(async { Ok(tonic::Status::unimplemented("").into_http()) });
        }
        let method = Unary(Arc::clone(&self.inner));
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                .apply_max_message_size_config(Some(MAX_REQUEST_BYTES), None);
            Ok(grpc.unary(method, req).await)
        })
    }
}
