//! Who may hold an ADS stream on a TLS connection: a proxy whose client certificate names the
//! namespace and service account its node claims (istiod's `checkConnectionIdentity`).
//! Without this, any proxy the CA ever certified could ask for another namespace's config by
//! writing that namespace into its node.
//!
//! On a plaintext connection nothing is proved and nothing is checked, as before TLS.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use capstan_ca::SpiffeId;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use futures::Stream;
use tonic::Status;
use tracing::warn;

use super::limits::{Logged, check_node};
use super::request::SotwRequest;
use crate::net::tls::PeerIdentity;
use crate::proxy::{node_namespace, node_service_account};

/// What a stream must prove, decided when it opens.
#[derive(Debug, Clone)]
pub(crate) enum Admission {
    /// Plaintext: the node is taken at its word.
    Open,
    /// TLS with a certified identity: every node the stream sends must match it.
    Certified(Arc<SpiffeId>),
}

/// Whether a stream may open on a connection that proved `identity`.
pub(crate) fn admit(identity: &PeerIdentity) -> Result<Admission, Status> {
    match identity {
        PeerIdentity::Plaintext => Ok(Admission::Open),
        PeerIdentity::Anonymous => Err(Status::unauthenticated(
            "ADS over TLS needs a client certificate from the mesh's CA",
        )),
        PeerIdentity::Certified(None) => Err(Status::unauthenticated(
            "the client certificate carries no single workload identity \
             (a URI SAN spiffe://<trust domain>/ns/<namespace>/sa/<service account>)",
        )),
        PeerIdentity::Certified(Some(id)) => Ok(Admission::Certified(id.clone())),
    }
}

/// Whether `node` may speak for `identity`: the namespace and service account it claims, if
/// it claims any, must be the certificate's. A node that claims neither is Istio's case too:
/// it is served only what is not scoped to a namespace.
pub(crate) fn check(identity: &SpiffeId, node: &Node) -> Result<(), Status> {
    check_node(node)?;
    let claims = [
        ("namespace", node_namespace(node), &identity.namespace),
        (
            "service account",
            node_service_account(node),
            &identity.service_account,
        ),
    ];
    for (what, claimed, certified) in claims {
        if let Some(claimed) = claimed
            && claimed != certified.as_str()
        {
            return Err(Status::permission_denied(format!(
                "the node claims {what} \"{}\" but its client certificate is for {what} \
                 \"{}\" ({identity})",
                Logged::new(claimed),
                Logged::new(certified),
            )));
        }
    }
    Ok(())
}

/// A request that may carry the proxy's node.
pub(crate) trait HasNode {
    fn node(&self) -> Option<&Node>;
}

impl HasNode for SotwRequest {
    fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }
}

impl HasNode for DeltaDiscoveryRequest {
    fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }
}

/// A stream's requests, each node checked against the certificate before the protocol sees
/// it. Every request carrying a node is checked, not only the first: the protocol takes the
/// first node with an id, which need not be the first node sent.
pub(crate) struct Authenticated<S> {
    inner: S,
    admission: Admission,
    first: bool,
    refused: bool,
}

impl<S> Authenticated<S> {
    pub(crate) fn new(inner: S, admission: Admission) -> Self {
        Self {
            inner,
            admission,
            first: true,
            refused: false,
        }
    }
}

impl<S, T> Stream for Authenticated<S>
where
    S: Stream<Item = Result<T, Status>> + Unpin,
    T: HasNode,
{
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.refused {
            return Poll::Ready(None);
        }
        let item = ready!(Pin::new(&mut this.inner).poll_next(cx));
        let Admission::Certified(identity) = &this.admission else {
            return Poll::Ready(item);
        };
        let Some(Ok(request)) = item else {
            return Poll::Ready(item);
        };
        let first = std::mem::replace(&mut this.first, false);
        let verdict = match request.node() {
            Some(node) => check(identity, node).map_err(|status| (status, node.id.as_str())),
            None if first => Err((
                Status::invalid_argument(
                    "the first request of a stream must carry the node, to be checked \
                     against the client certificate",
                ),
                "",
            )),
            None => Ok(()),
        };
        match verdict {
            Ok(()) => Poll::Ready(Some(Ok(request))),
            Err((status, node)) => {
                warn!(node = %Logged::new(node), certificate = %identity, code = ?status.code(),
                    reason = status.message(), "proxy refused: its node does not match its client certificate");
                this.refused = true;
                Poll::Ready(Some(Err(status)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    use futures::StreamExt;
    use tonic::Code;

    use super::*;
    use crate::ads::limits::MAX_NODE_FIELD;

    fn node(id: &str, metadata: &[(&str, &str)]) -> Node {
        let fields: HashMap<String, Value> = metadata
            .iter()
            .map(|(k, v)| {
                let value = Value {
                    kind: Some(Kind::StringValue(v.to_string())),
                };
                (k.to_string(), value)
            })
            .collect();
        Node {
            id: id.into(),
            metadata: Some(Struct { fields }),
            ..Node::default()
        }
    }

    fn reviews() -> SpiffeId {
        SpiffeId::new("cluster.local", "bookinfo", "reviews")
    }

    const ID: &str = "sidecar~10.0.0.1~reviews-1.bookinfo~bookinfo.svc.cluster.local";

    #[test]
    fn a_node_matching_its_certificate_passes() {
        let id = reviews();
        let full = node(
            ID,
            &[("NAMESPACE", "bookinfo"), ("SERVICE_ACCOUNT", "reviews")],
        );
        check(&id, &full).expect("metadata matches");
        check(&id, &node(ID, &[])).expect("the id's namespace matches");
        check(&id, &node("envoy-1", &[])).expect("claims nothing");
    }

    #[test]
    fn another_namespace_or_service_account_is_denied_naming_both() {
        let id = reviews();
        for (n, what, claimed, certified) in [
            (
                node(ID, &[("NAMESPACE", "payments")]),
                "namespace",
                "payments",
                "bookinfo",
            ),
            (
                node(
                    "sidecar~10.0.0.1~x.payments~payments.svc.cluster.local",
                    &[],
                ),
                "namespace",
                "payments",
                "bookinfo",
            ),
            (
                node(ID, &[("SERVICE_ACCOUNT", "ratings")]),
                "service account",
                "ratings",
                "reviews",
            ),
        ] {
            let status = check(&id, &n).expect_err("mismatch");
            assert_eq!(status.code(), Code::PermissionDenied);
            let message = status.message();
            assert!(message.contains(what), "{message}");
            assert!(message.contains(claimed), "{message}");
            assert!(message.contains(certified), "{message}");
        }
    }

    #[test]
    fn an_oversized_service_account_is_refused_before_comparing() {
        let long = "a".repeat(MAX_NODE_FIELD + 1);
        let status =
            check(&reviews(), &node(ID, &[("SERVICE_ACCOUNT", &long)])).expect_err("too long");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("SERVICE_ACCOUNT"));
    }

    #[test]
    fn admission_follows_what_tls_proved() {
        assert!(matches!(
            admit(&PeerIdentity::Plaintext),
            Ok(Admission::Open)
        ));
        let anonymous = admit(&PeerIdentity::Anonymous).expect_err("no certificate");
        assert_eq!(anonymous.code(), Code::Unauthenticated);
        let nameless = admit(&PeerIdentity::Certified(None)).expect_err("no identity");
        assert_eq!(nameless.code(), Code::Unauthenticated);
        let certified = admit(&PeerIdentity::Certified(Some(Arc::new(reviews()))));
        assert!(matches!(certified, Ok(Admission::Certified(_))));
    }

    fn request(node: Option<Node>) -> Result<DeltaDiscoveryRequest, Status> {
        Ok(DeltaDiscoveryRequest {
            node,
            ..DeltaDiscoveryRequest::default()
        })
    }

    #[tokio::test]
    async fn a_stream_ends_at_the_first_refused_node() {
        let certified = Admission::Certified(Arc::new(reviews()));
        let requests = vec![
            request(Some(node(ID, &[]))),
            request(None),
            // A later node cannot switch namespaces either.
            request(Some(node(ID, &[("NAMESPACE", "payments")]))),
            request(None),
        ];
        let mut stream = Authenticated::new(futures::stream::iter(requests), certified.clone());
        assert!(matches!(stream.next().await, Some(Ok(_))));
        assert!(matches!(stream.next().await, Some(Ok(_))));
        let refused = stream.next().await.expect("an item").expect_err("refused");
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(stream.next().await.is_none(), "nothing after the refusal");

        let mut nodeless =
            Authenticated::new(futures::stream::iter(vec![request(None)]), certified);
        let refused = nodeless
            .next()
            .await
            .expect("an item")
            .expect_err("refused");
        assert_eq!(refused.code(), Code::InvalidArgument);

        let open = vec![request(Some(node(ID, &[("NAMESPACE", "payments")])))];
        let mut plaintext = Authenticated::new(futures::stream::iter(open), Admission::Open);
        assert!(
            matches!(plaintext.next().await, Some(Ok(_))),
            "plaintext checks nothing"
        );
    }
}
