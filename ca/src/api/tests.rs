use super::*;

struct Echo;

impl CreateCertificate for Echo {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        let request = request.into_inner();
        if request.csr.is_empty() {
            return Err(tonic::Status::invalid_argument("empty CSR"));
        }
        Ok(tonic::Response::new(IstioCertificateResponse {
            cert_chain: vec![request.csr, request.validity_duration.to_string()],
        }))
    }
}

#[tokio::test]
async fn a_request_reaches_the_implementation_and_its_answer_comes_back() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServer::new(Echo))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = IstioCertificateClient::new(channel);
    let answer = client
        .create_certificate(tonic::Request::new(IstioCertificateRequest {
            csr: "pem".into(),
            validity_duration: 3600,
            metadata: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.cert_chain, ["pem", "3600"]);

    let refused = client
        .create_certificate(tonic::Request::new(IstioCertificateRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
}
