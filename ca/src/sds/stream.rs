//! One state-of-the-world SDS stream: what Envoy asked for, what it was last sent, and when
//! to send again. Pure (no I/O), so the protocol rules are tested on their own.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::{Published, SECRET_TYPE_URL, secret_resource};

/// Most names one request may ask for: an Envoy asks for one or two per stream.
pub const MAX_NAMES: usize = 16;
/// Longest secret name accepted.
pub const MAX_NAME_LEN: usize = 256;
/// Longest NACK message logged.
const MAX_LOGGED_ERROR: usize = 512;

#[derive(Debug, Default)]
pub(super) struct StreamState {
    /// Names the latest accepted request asked for (known or not).
    requested: BTreeSet<String>,
    /// What the last response carried, and under which nonce and version.
    sent: Option<Sent>,
    nonces: u64,
}

#[derive(Debug)]
struct Sent {
    nonce: String,
    version: u64,
    names: BTreeSet<String>,
}

impl StreamState {
    /// Takes in a request; `Ok(true)` when a response should follow (if there is something to
    /// send), `Err` for a request that ends the stream.
    pub(super) fn on_request(&mut self, request: &DiscoveryRequest) -> Result<bool, tonic::Status> {
        if !request.type_url.is_empty() && request.type_url != SECRET_TYPE_URL {
            return Err(tonic::Status::invalid_argument(format!(
                "this server only serves {SECRET_TYPE_URL}"
            )));
        }
        if request.resource_names.len() > MAX_NAMES {
            return Err(tonic::Status::invalid_argument(format!(
                "at most {MAX_NAMES} secret names per request"
            )));
        }
        if request
            .resource_names
            .iter()
            .any(|n| n.len() > MAX_NAME_LEN)
        {
            return Err(tonic::Status::invalid_argument(format!(
                "secret names are at most {MAX_NAME_LEN} bytes"
            )));
        }
        // A reply to a response older than the last one: the last one is still on its way,
        // and the client will answer it (xDS protocol, "stale nonce").
        if !request.response_nonce.is_empty()
            && self.sent.as_ref().map(|s| s.nonce.as_str()) != Some(&request.response_nonce)
        {
            return Ok(false);
        }
        self.requested = request.resource_names.iter().cloned().collect();
        if let Some(error) = &request.error_detail {
            let message: String = error.message.chars().take(MAX_LOGGED_ERROR).collect();
            tracing::warn!(
                names = ?self.requested,
                version = %request.version_info,
                "Envoy rejected the secrets (NACK): {message}"
            );
        }
        // Answer what has not been answered: a new stream, or a changed set of names. An ACK,
        // or a NACK of what is still current, needs nothing until the secrets change.
        Ok(self.sent.as_ref().is_none_or(|s| s.names != self.requested))
    }

    /// Whether `current` is newer than what this stream last sent.
    pub(super) fn is_newer(&self, current: &Published) -> bool {
        self.sent
            .as_ref()
            .is_none_or(|s| s.version < current.version)
    }

    /// The response carrying the requested names this server knows (unknown ones are left
    /// out), or `None` when it would carry nothing.
    pub(super) fn respond(&mut self, current: &Published) -> Option<DiscoveryResponse> {
        let resources: Vec<_> = self
            .requested
            .iter()
            .filter_map(|name| secret_resource(name, &current.secrets))
            .collect();
        if resources.is_empty() {
            return None;
        }
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        self.sent = Some(Sent {
            nonce: nonce.clone(),
            version: current.version,
            names: self.requested.clone(),
        });
        Some(DiscoveryResponse {
            version_info: current.version.to_string(),
            resources,
            type_url: SECRET_TYPE_URL.to_string(),
            nonce,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::google::rpc::Status;

    use super::*;
    use crate::sds::WorkloadSecrets;

    fn published(version: u64) -> Published {
        Published {
            version,
            secrets: Arc::new(WorkloadSecrets {
                cert_chain_pem: "chain".into(),
                private_key_pem: "key".into(),
                trust_bundle_pem: vec!["root".into()],
            }),
        }
    }

    fn request(names: &[&str], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: SECRET_TYPE_URL.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    #[test]
    fn ack_is_quiet_new_names_and_new_versions_are_answered() {
        let mut s = StreamState::default();
        assert!(s.on_request(&request(&["default"], "")).unwrap());
        let first = s.respond(&published(1)).expect("a response");
        assert_eq!(first.resources.len(), 1);
        assert_eq!(first.version_info, "1");

        assert!(!s.on_request(&request(&["default"], &first.nonce)).unwrap());
        assert!(!s.is_newer(&published(1)));
        assert!(s.is_newer(&published(2)));

        let more = request(&["default", "ROOTCA"], &first.nonce);
        assert!(s.on_request(&more).unwrap());
        let second = s.respond(&published(1)).expect("a response");
        assert_eq!(second.resources.len(), 2);
        assert_ne!(second.nonce, first.nonce);
    }

    #[test]
    fn stale_nonces_and_nacks_send_nothing() {
        let mut s = StreamState::default();
        s.on_request(&request(&["ROOTCA"], "")).unwrap();
        let first = s.respond(&published(1)).expect("response");
        assert!(
            !s.on_request(&request(&["ROOTCA", "default"], "old"))
                .unwrap()
        );
        let mut nack = request(&["ROOTCA"], &first.nonce);
        nack.error_detail = Some(Status {
            code: 3,
            message: "bad".into(),
            ..Default::default()
        });
        assert!(!s.on_request(&nack).unwrap());
    }

    #[test]
    fn unknown_names_are_left_out_and_alone_get_no_answer() {
        let mut s = StreamState::default();
        assert!(s.on_request(&request(&["nope"], "")).unwrap());
        assert!(s.respond(&published(1)).is_none());
        s.on_request(&request(&["nope", "default"], "")).unwrap();
        let r = s.respond(&published(1)).expect("response");
        assert_eq!(r.resources.len(), 1);
    }

    #[test]
    fn oversized_or_foreign_requests_end_the_stream() {
        let mut s = StreamState::default();
        let many: Vec<String> = (0..=MAX_NAMES).map(|i| i.to_string()).collect();
        let names: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(s.on_request(&request(&names, "")).is_err());
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(s.on_request(&request(&[&long], "")).is_err());
        let mut foreign = request(&["default"], "");
        foreign.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
        assert!(s.on_request(&foreign).is_err());
    }
}
