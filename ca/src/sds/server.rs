//! The `SecretDiscoveryService` implementation: one task per stream, following the request
//! stream and the published secrets.

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::SecretsReceiver;
use super::stream::StreamState;

/// Largest request decoded. Envoy's first request carries its node, whose list of built-in
/// extensions runs to tens of KiB; names are bounded far below this.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Most streams open at once: one Envoy opens one per secret it uses.
pub const MAX_STREAMS: usize = 64;

type ResponseResult = Result<DiscoveryResponse, tonic::Status>;

/// Serves the secrets of a [`SecretsReceiver`].
#[derive(Debug, Clone)]
pub struct SdsServer {
    secrets: SecretsReceiver,
    streams: Arc<Semaphore>,
}

impl SdsServer {
    pub fn new(secrets: SecretsReceiver) -> Self {
        Self {
            secrets,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }

    /// The tonic service, with the request size bound applied.
    pub fn into_service(self) -> SecretDiscoveryServiceServer<Self> {
        SecretDiscoveryServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsServer {
    type DeltaSecretsStream = ReceiverStream<Result<DeltaDiscoveryResponse, tonic::Status>>;
    type StreamSecretsStream = ReceiverStream<ResponseResult>;

    async fn delta_secrets(
        &self,
        _request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaSecretsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "SDS is served state-of-the-world (StreamSecrets) only",
        ))
    }

    async fn stream_secrets(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamSecretsStream>, tonic::Status> {
        let permit = Arc::clone(&self.streams)
            .try_acquire_owned()
            .map_err(|_| tonic::Status::resource_exhausted("too many SDS streams"))?;
        let (tx, rx) = mpsc::channel(4);
        let inbound = request.into_inner();
        let secrets = self.secrets.clone();
        tokio::spawn(async move {
            run_stream(inbound, secrets, tx).await;
            drop(permit);
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_secrets(
        &self,
        request: tonic::Request<DiscoveryRequest>,
    ) -> Result<tonic::Response<DiscoveryResponse>, tonic::Status> {
        let mut state = StreamState::default();
        state.on_request(request.get_ref())?;
        let current = self.secrets.borrow().clone();
        current
            .and_then(|c| state.respond(&c))
            .map(tonic::Response::new)
            .ok_or_else(|| tonic::Status::not_found("no such secret (yet)"))
    }
}

async fn run_stream(
    mut inbound: tonic::Streaming<DiscoveryRequest>,
    mut secrets: SecretsReceiver,
    tx: mpsc::Sender<ResponseResult>,
) {
    let mut state = StreamState::default();
    loop {
        let respond = tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(request)) => match state.on_request(&request) {
                    Ok(respond) => respond,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                },
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!("SDS stream ended: {status}");
                    return;
                }
            },
            changed = secrets.changed() => {
                if changed.is_err() {
                    return;
                }
                secrets
                    .borrow_and_update()
                    .as_ref()
                    .is_some_and(|current| state.is_newer(current))
            }
            () = tx.closed() => return,
        };
        if !respond {
            continue;
        }
        let current = secrets.borrow_and_update().clone();
        let Some(response) = current.and_then(|c| state.respond(&c)) else {
            continue;
        };
        tracing::debug!(version = %response.version_info, nonce = %response.nonce, "pushing secrets");
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
    }
}
