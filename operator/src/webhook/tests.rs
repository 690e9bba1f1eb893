//! The webhook over real TLS: a self-signed certificate (rcgen), the server on a
//! loopback port, a rustls client posting AdmissionReviews.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use super::{VALIDATE_PATH, serve, server_config};

struct Server {
    addr: std::net::SocketAddr,
    ca: CertificateDer<'static>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .unwrap_or_else(|e| panic!("rcgen: {e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cert_path = dir.path().join("tls.crt");
    let key_path = dir.path().join("tls.key");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&key_path, certified.signing_key.serialize_pem())
        .unwrap_or_else(|e| panic!("{e}"));
    let config = server_config(&cert_path, &key_path).unwrap_or_else(|e| panic!("{e:#}"));

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, Arc::new(config), async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        ca: certified.cert.der().clone(),
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

/// Sends one request over a fresh TLS connection; returns status and body.
async fn send(server: &Server, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(server.ca.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(server.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let name = ServerName::try_from("localhost").unwrap_or_else(|e| panic!("{e}"));
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake: {e}"));
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) = http1::handshake(TokioIo::new(tls))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|e| panic!("{e}"));
    let response = sender
        .send_request(request)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .to_bytes();
    (status, bytes.to_vec())
}

fn admission_review(uid: &str, weights: [i32; 2]) -> Vec<u8> {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "networking.istio.io", "version": "v1beta1", "kind": "VirtualService"},
            "resource": {"group": "networking.istio.io", "version": "v1beta1", "resource": "virtualservices"},
            "requestKind": {"group": "networking.istio.io", "version": "v1beta1", "kind": "VirtualService"},
            "name": "reviews",
            "namespace": "bookinfo",
            "operation": "CREATE",
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters"]},
            "object": {
                "apiVersion": "networking.istio.io/v1beta1",
                "kind": "VirtualService",
                "metadata": {
                    "name": "reviews",
                    "namespace": "bookinfo",
                    "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                    "creationTimestamp": "2026-05-01T10:00:00Z",
                    "generation": 1,
                    "uid": "0b5cbd8e-4c3f-4d47-9c1e-3a6f0e2a9b11",
                    "managedFields": [{
                        "apiVersion": "networking.istio.io/v1beta1",
                        "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:spec": {".": {}, "f:hosts": {}}},
                        "manager": "kubectl-client-side-apply",
                        "operation": "Update",
                        "time": "2026-05-01T10:00:00Z"
                    }]
                },
                "spec": {
                    "hosts": ["reviews"],
                    "http": [{"route": [
                        {"destination": {"host": "reviews", "subset": "v1"}, "weight": weights[0]},
                        {"destination": {"host": "reviews", "subset": "v3"}, "weight": weights[1]}
                    ]}]
                }
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    });
    serde_json::to_vec(&review).unwrap_or_default()
}

fn parse(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn answers_admission_reviews_over_tls() {
    let mut server = start().await;

    let (status, body) = send(
        &server,
        Method::POST,
        VALIDATE_PATH,
        admission_review("uid-valid", [50, 50]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let answer = parse(&body);
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], "uid-valid");
    assert_eq!(answer["response"]["allowed"], true);

    let (status, body) = send(
        &server,
        Method::POST,
        VALIDATE_PATH,
        admission_review("uid-invalid", [50, 40]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let answer = parse(&body);
    assert_eq!(answer["response"]["uid"], "uid-invalid");
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(
        answer["response"]["status"]["message"],
        "VirtualService bookinfo/reviews is invalid: spec.http[0].route: weights must sum to 100, got 90"
    );

    let (status, _) = send(&server, Method::POST, VALIDATE_PATH, b"not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = send(&server, Method::GET, VALIDATE_PATH, Vec::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, body) = send(&server, Method::GET, "/ready", Vec::new()).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"ok\n"[..]));

    if let Some(stop) = server.stop.take() {
        let _ = stop.send(());
    }
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), &mut server.task).await;
    assert!(stopped.is_ok(), "the server did not stop");
}

#[test]
fn bad_key_material_is_reported() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, "not a certificate").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&key, "not a key").unwrap_or_else(|e| panic!("{e}"));
    let err = server_config(&cert, &key).err().map(|e| format!("{e:#}"));
    assert!(
        err.is_some_and(|e| e.contains("tls.crt")),
        "expected an error naming the file"
    );
}

#[tokio::test]
async fn bodies_over_the_cap_are_refused() {
    let server = start().await;
    let mut body = admission_review("uid-large", [50, 50]);
    body.resize(super::MAX_BODY + 1, b' ');
    let (status, answer) = send(&server, Method::POST, VALIDATE_PATH, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&answer).contains("cannot read the body"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Just under the cap is read and decided (trailing whitespace is valid JSON).
    let mut body = admission_review("uid-at-cap", [50, 50]);
    body.resize(super::MAX_BODY, b' ');
    let (status, answer) = send(&server, Method::POST, VALIDATE_PATH, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(parse(&answer)["response"]["uid"], "uid-at-cap");
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408() {
    // Headers sent, then the body never comes (a slow client holding a webhook slot).
    let stalled = http_body_util::StreamBody::new(futures::stream::pending::<
        Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
    >());
    let answer = super::validate(stalled, Duration::from_millis(50));
    // The bound only turns a hang into a failure.
    let response = tokio::time::timeout(Duration::from_secs(30), answer)
        .await
        .expect("the read was never given up");
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("did not arrive within 50 ms"));
}

/// `/inject` next to `/validate`, on a certificate swapped while the server runs (as the
/// in-process webhook's is renewed): the next handshake presents the new one.
#[tokio::test]
async fn inject_is_served_and_a_swapped_certificate_is_presented() {
    use super::inject::{InjectArgs, InjectConfig};
    use super::tls::SwappableCert;
    use super::{Routes, serve_routes};

    let first = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .unwrap_or_else(|e| panic!("rcgen: {e}"));
    let cert = SwappableCert::new(&first.cert.pem(), &first.signing_key.serialize_pem())
        .unwrap_or_else(|e| panic!("{e}"));
    let config = cert.server_config().unwrap_or_else(|e| panic!("{e}"));
    let inject = InjectConfig::new(
        &InjectArgs {
            proxy_image: "capstan-proxy:test".into(),
            proxy_xds_address: None,
            native_sidecars: true,
            revision: "default".into(),
            inject_fail_closed: false,
        },
        "istio-system",
        "cluster.local",
    );
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = capstan_xds::net::ConnectionLimits {
        max_connections: 16,
        max_per_ip: 16,
    };
    let routes = Arc::new(Routes {
        inject: Some(inject),
    });
    let task = tokio::spawn(serve_routes(
        listener,
        limits,
        Arc::new(config),
        routes,
        async {
            let _ = stopped.await;
        },
    ));
    let mut server = Server {
        addr,
        ca: first.cert.der().clone(),
        stop: Some(stop),
        task,
        _dir: tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")),
    };

    let pod_review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "pod-1",
            "namespace": "bookinfo",
            "operation": "CREATE",
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                       "spec": {"containers": [{"name": "web", "image": "web"}]}},
        }
    });
    let body = serde_json::to_vec(&pod_review).unwrap_or_default();
    let (status, answer) = send(&server, Method::POST, "/inject", body).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&answer).unwrap_or_default();
    assert_eq!(answer["response"]["uid"], "pod-1");
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let (status, _) = send(&server, Method::GET, "/inject", Vec::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    let second = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .unwrap_or_else(|e| panic!("rcgen: {e}"));
    cert.set(&second.cert.pem(), &second.signing_key.serialize_pem())
        .unwrap_or_else(|e| panic!("{e}"));
    // `send` trusts only `server.ca`: the handshake fails unless the new one is presented.
    server.ca = second.cert.der().clone();
    let (status, _) = send(&server, Method::GET, "/ready", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(cert.set("not a certificate", "nor a key").is_err());

    if let Some(stop) = server.stop.take() {
        let _ = stop.send(());
    }
    let _ = (&mut server.task).await;
}
