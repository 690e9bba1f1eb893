//! ADS over TLS against real TLS clients, with certificates from capstan's CA.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use capstan_ca::{IssuedCertificate, RootCa, SpiffeId};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::service::Routes;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::ServerTls;
use crate::SnapshotCache;
use crate::net::grpc::GrpcLimits;
use crate::resource::type_url;
use crate::test_support::apply;

const DAY: Duration = Duration::from_secs(86_400);
/// Bounds a hang only; nothing here is timed.
const PATIENCE: Duration = Duration::from_secs(20);

struct Pki {
    root: RootCa,
}

impl Pki {
    fn new() -> Self {
        Self {
            root: RootCa::generate("cluster.local", DAY).expect("root"),
        }
    }

    fn server(&self) -> IssuedCertificate {
        let names = ["localhost".to_string()];
        let ips = [std::net::Ipv4Addr::LOCALHOST.into()];
        self.root
            .issue_server(&names, &ips, None, DAY)
            .expect("server certificate")
    }

    fn workload(&self, ns: &str, sa: &str) -> IssuedCertificate {
        self.root
            .issue(&SpiffeId::new("cluster.local", ns, sa), DAY)
            .expect("workload certificate")
    }

    fn tls(&self) -> ServerTls {
        let server = self.server();
        ServerTls::new(
            &server.certificate_pem,
            &server.private_key_pem,
            &[self.root.root_pem().to_string()],
        )
        .expect("server TLS")
    }
}

/// Polls `done` until it holds; panics after `patience`.
async fn wait_for(patience: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + patience;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start(tls: &ServerTls, limits: GrpcLimits) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cache = SnapshotCache::new();
    apply(
        &cache,
        &[(type_url::CLUSTER, "reviews", b"\x0a\x07reviews")],
    );
    let tls = tls.clone();
    tokio::spawn(async move {
        crate::ads::serve_tls(
            listener,
            cache,
            &tls,
            &limits,
            Routes::default(),
            std::future::pending(),
        )
        .await
    });
    addr
}

async fn channel(
    addr: SocketAddr,
    pki: &Pki,
    client: Option<&IssuedCertificate>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.root.root_pem()))
        .domain_name("localhost");
    if let Some(client) = client {
        tls = tls.identity(Identity::from_pem(
            &client.certificate_pem,
            &client.private_key_pem,
        ));
    }
    Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)?
        .connect()
        .await
}

fn node(namespace: &str, service_account: &str) -> Node {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_string())),
    };
    let fields = HashMap::from([
        ("NAMESPACE".to_string(), string(namespace)),
        ("SERVICE_ACCOUNT".to_string(), string(service_account)),
    ]);
    Node {
        id: format!("sidecar~127.0.0.1~reviews-1.{namespace}~{namespace}.svc.cluster.local"),
        metadata: Some(Struct { fields }),
        ..Node::default()
    }
}

/// The first response of a SotW stream asking for every cluster, or the status ending it.
async fn first_response(channel: Channel, node: Node) -> Result<DiscoveryResponse, tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    let request = DiscoveryRequest {
        node: Some(node),
        type_url: type_url::CLUSTER.to_string(),
        ..DiscoveryRequest::default()
    };
    tx.send(request).await.expect("queued");
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let call = async {
        let mut responses = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        match responses.message().await? {
            Some(response) => Ok(response),
            None => Err(tonic::Status::unknown(
                "the stream ended without a response",
            )),
        }
    };
    let result = tokio::time::timeout(PATIENCE, call).await.expect("no hang");
    drop(tx);
    result
}

#[tokio::test]
async fn a_proxy_whose_certificate_matches_its_node_gets_its_config() {
    let pki = Pki::new();
    let tls = pki.tls();
    let addr = start(&tls, GrpcLimits::default()).await;
    let client = pki.workload("bookinfo", "reviews");
    let channel = channel(addr, &pki, Some(&client)).await.expect("connected");
    let response = first_response(channel, node("bookinfo", "reviews"))
        .await
        .expect("served");
    assert_eq!(response.type_url, type_url::CLUSTER);
    assert_eq!(response.resources.len(), 1);
}

#[tokio::test]
async fn a_node_claiming_another_namespace_is_denied() {
    let pki = Pki::new();
    let tls = pki.tls();
    let addr = start(&tls, GrpcLimits::default()).await;
    let client = pki.workload("bookinfo", "reviews");
    let channel = channel(addr, &pki, Some(&client)).await.expect("connected");
    let status = first_response(channel.clone(), node("payments", "reviews"))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("payments"), "{status:?}");
    assert!(status.message().contains("bookinfo"), "{status:?}");

    let status = first_response(channel, node("bookinfo", "ratings"))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

#[tokio::test]
async fn ads_without_a_client_certificate_is_unauthenticated() {
    let pki = Pki::new();
    let tls = pki.tls();
    let addr = start(&tls, GrpcLimits::default()).await;
    let channel = channel(addr, &pki, None)
        .await
        .expect("TLS without a client cert");
    let status = first_response(channel, node("bookinfo", "reviews"))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(
        tls.handshake_failures(),
        0,
        "the handshake itself succeeded"
    );
}

#[tokio::test]
async fn a_client_certificate_from_another_root_fails_the_handshake() {
    let pki = Pki::new();
    let tls = pki.tls();
    let addr = start(&tls, GrpcLimits::default()).await;
    let stranger = Pki::new().workload("bookinfo", "reviews");
    // In TLS 1.3 the client may finish before the server has checked its certificate, so the
    // refusal shows on connecting or on the first call.
    let result = match channel(addr, &pki, Some(&stranger)).await {
        Ok(channel) => first_response(channel, node("bookinfo", "reviews"))
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    let status = result.expect_err("must not be served");
    assert_ne!(
        status.code(),
        Code::PermissionDenied,
        "refused by TLS, not ADS"
    );
    wait_for(PATIENCE, || tls.handshake_failures() >= 1).await;
}

/// A client config trusting `root_pem`, presenting `client` if given.
fn rustls_client(root_pem: &str, client: Option<&IssuedCertificate>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(root_pem.as_bytes()).expect("root"))
        .expect("root added");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        Some(client) => {
            let chain = CertificateDer::pem_slice_iter(client.certificate_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("chain");
            let key =
                PrivateKeyDer::from_pem_slice(client.private_key_pem.as_bytes()).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The leaf certificate the server presents to a new connection.
async fn served_leaf(addr: SocketAddr, root_pem: &str) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = tokio::time::timeout(PATIENCE, rustls_client(root_pem, None).connect(name, tcp))
        .await
        .expect("no hang")
        .expect("handshake");
    let (_, session) = tls.get_ref();
    session.peer_certificates().expect("a server certificate")[0].to_vec()
}

fn leaf_der(issued: &IssuedCertificate) -> Vec<u8> {
    CertificateDer::from_pem_slice(issued.certificate_pem.as_bytes())
        .expect("leaf")
        .to_vec()
}

#[tokio::test]
async fn silent_clients_do_not_hold_up_a_real_handshake() {
    let pki = Pki::new();
    let tls = pki.tls();
    // The silent clients' deadline is far off: only concurrency lets the real client in.
    let limits = GrpcLimits {
        first_request_timeout: Duration::from_secs(60),
        ..GrpcLimits::default()
    };
    let addr = start(&tls, limits).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // And one that stops in the middle of its ClientHello.
    let mut half = TcpStream::connect(addr).await.expect("connect");
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("partial hello");

    let client = pki.workload("bookinfo", "reviews");
    let channel = tokio::time::timeout(Duration::from_secs(10), channel(addr, &pki, Some(&client)))
        .await
        .expect("connected while the silent clients hang")
        .expect("connected");
    first_response(channel, node("bookinfo", "reviews"))
        .await
        .expect("served");
    drop((silent, half));
}

#[tokio::test]
async fn a_silent_client_is_dropped_at_the_deadline_and_counted() {
    let pki = Pki::new();
    let tls = pki.tls();
    let limits = GrpcLimits {
        first_request_timeout: Duration::from_millis(200),
        ..GrpcLimits::default()
    };
    let addr = start(&tls, limits).await;
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut buf = Vec::new();
    tokio::time::timeout(PATIENCE, silent.read_to_end(&mut buf))
        .await
        .expect("closed by the server")
        .ok();
    assert!(buf.is_empty(), "the server never answered a silent client");
    wait_for(PATIENCE, || tls.handshake_failures() == 1).await;
}

#[tokio::test]
async fn a_new_connection_sees_the_swapped_certificate_and_roots() {
    let pki = Pki::new();
    let first = pki.server();
    let tls = ServerTls::new(
        &first.certificate_pem,
        &first.private_key_pem,
        &[pki.root.root_pem().to_string()],
    )
    .expect("server TLS");
    let addr = start(&tls, GrpcLimits::default()).await;
    let root = pki.root.root_pem();
    assert_eq!(served_leaf(addr, root).await, leaf_der(&first));

    let second = pki.server();
    tls.set_certificate(&second.certificate_pem, &second.private_key_pem)
        .expect("swapped");
    assert_eq!(served_leaf(addr, root).await, leaf_der(&second));

    // A bad pair is refused and the certificate in use kept.
    let mismatched = tls.set_certificate(&first.certificate_pem, &second.private_key_pem);
    assert!(mismatched.is_err());
    assert_eq!(served_leaf(addr, root).await, leaf_der(&second));

    // A root added to the bundle (a rotation's overlap) admits its workloads.
    let next = Pki::new();
    let rotated = next.workload("bookinfo", "reviews");
    tls.set_roots(&[root.to_string(), next.root.root_pem().to_string()])
        .expect("roots");
    let channel = channel(addr, &pki, Some(&rotated))
        .await
        .expect("connected");
    first_response(channel, node("bookinfo", "reviews"))
        .await
        .expect("served under the new root");
}
