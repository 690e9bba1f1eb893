//! SDS over a real Unix socket with a tonic client, as Envoy would talk to it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::*;

fn secrets(serial: &str) -> WorkloadSecrets {
    WorkloadSecrets {
        cert_chain_pem: format!("chain-{serial}"),
        private_key_pem: format!("key-{serial}"),
        trust_bundle_pem: vec!["root-1".into(), "root-2".into()],
    }
}

async fn uds_channel(path: PathBuf) -> Channel {
    Endpoint::from_static("http://sds.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .expect("connect over the socket")
}

struct Served {
    _dir: tempfile::TempDir,
    path: PathBuf,
    publisher: SecretsPublisher,
}

fn serve() -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub").join("socket");
    let (publisher, rx) = SecretsPublisher::new();
    let listener = bind_uds(&path).expect("bind");
    tokio::spawn(serve_uds(listener, rx, std::future::pending()));
    Served {
        _dir: dir,
        path,
        publisher,
    }
}

fn request(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: SECRET_TYPE_URL.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn decode(response: &DiscoveryResponse) -> Vec<Secret> {
    response
        .resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SECRET_TYPE_URL);
            Secret::decode(any.value.as_slice()).expect("a Secret")
        })
        .collect()
}

fn inline(source: Option<&envoy_types::pb::envoy::config::core::v3::DataSource>) -> String {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).expect("utf-8"),
        other => panic!("not inline bytes: {other:?}"),
    }
}

async fn next(stream: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a response within 5 s")
        .expect("no stream error")
        .expect("stream open")
}

#[tokio::test]
async fn serves_both_secrets_and_pushes_a_rotation_to_the_open_stream() {
    let served = serve();
    let mut client = SecretDiscoveryServiceClient::new(uds_channel(served.path.clone()).await);
    let (tx, rx) = mpsc::channel(8);
    let mut responses = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    tx.send(request(&["default", "ROOTCA", "unknown"], "", ""))
        .await
        .unwrap();

    // Nothing is published yet: the stream waits rather than answering empty.
    let early = tokio::time::timeout(Duration::from_millis(300), responses.message()).await;
    assert!(early.is_err(), "answered before any secret: {early:?}");

    served.publisher.publish(secrets("a"));
    let first = next(&mut responses).await;
    assert_eq!(first.version_info, "1");
    let got = decode(&first);
    assert_eq!(got.len(), 2, "the unknown name is left out");
    for s in &got {
        match (s.name.as_str(), &s.r#type) {
            ("default", Some(secret::Type::TlsCertificate(c))) => {
                assert_eq!(inline(c.certificate_chain.as_ref()), "chain-a");
                assert_eq!(inline(c.private_key.as_ref()), "key-a");
            }
            ("ROOTCA", Some(secret::Type::ValidationContext(v))) => {
                assert_eq!(inline(v.trusted_ca.as_ref()), "root-1\nroot-2\n");
            }
            other => panic!("unexpected secret {other:?}"),
        }
    }

    // The ACK gets no answer; a new publication does, on the same stream.
    tx.send(request(
        &["default", "ROOTCA", "unknown"],
        &first.version_info,
        &first.nonce,
    ))
    .await
    .unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(300), responses.message()).await;
    assert!(quiet.is_err(), "answered an ACK: {quiet:?}");
    served.publisher.publish(secrets("b"));
    let second = next(&mut responses).await;
    assert_eq!(second.version_info, "2");
    assert_ne!(second.nonce, first.nonce);
    let chain = decode(&second)
        .into_iter()
        .find_map(|s| match s.r#type {
            Some(secret::Type::TlsCertificate(c)) => Some(inline(c.certificate_chain.as_ref())),
            _ => None,
        })
        .expect("default in the push");
    assert_eq!(chain, "chain-b");
}

#[tokio::test]
async fn unknown_names_alone_get_no_answer_and_delta_is_unimplemented() {
    let served = serve();
    served.publisher.publish(secrets("a"));
    let mut client = SecretDiscoveryServiceClient::new(uds_channel(served.path.clone()).await);
    let (tx, rx) = mpsc::channel(8);
    let mut responses = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    tx.send(request(&["file-cert:/etc/x"], "", ""))
        .await
        .unwrap();
    let none = tokio::time::timeout(Duration::from_millis(300), responses.message()).await;
    assert!(none.is_err(), "answered an unknown name: {none:?}");
    tx.send(request(&["ROOTCA"], "", "")).await.unwrap();
    let r = next(&mut responses).await;
    assert_eq!(decode(&r)[0].name, "ROOTCA");

    let (_dtx, drx) = mpsc::channel::<DeltaDiscoveryRequest>(1);
    let delta = client.delta_secrets(ReceiverStream::new(drx)).await;
    assert_eq!(
        delta.err().map(|s| s.code()),
        Some(tonic::Code::Unimplemented)
    );
}

#[tokio::test]
async fn a_foreign_type_ends_the_stream_with_invalid_argument() {
    let served = serve();
    served.publisher.publish(secrets("a"));
    let mut client = SecretDiscoveryServiceClient::new(uds_channel(served.path.clone()).await);
    let mut foreign = request(&["default"], "", "");
    foreign.type_url = "type.googleapis.com/envoy.config.listener.v3.Listener".into();
    let mut responses = client
        .stream_secrets(tokio_stream::iter([foreign]))
        .await
        .expect("stream")
        .into_inner();
    let status = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .expect("in time")
        .expect_err("an error");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[tokio::test]
async fn socket_is_private_replaces_a_stale_socket_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("socket");
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    let listener = bind_uds(&path).expect("replaces the stale socket");
    assert_eq!(mode(&path), 0o600);
    drop(listener);

    let file = dir.path().join("file");
    std::fs::write(&file, "keep me").unwrap();
    assert!(matches!(bind_uds(&file), Err(SdsError::NotASocket(_))));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn debug_leaves_the_key_out() {
    let shown = format!("{:?}", secrets("secret-material"));
    assert!(!shown.contains("key-secret-material"), "{shown}");
}
