use k8s_openapi::api::authentication::v1::UserInfo;

use super::*;

const TOKEN: &str = "header.payload.signature";

fn ours() -> Vec<String> {
    vec![DEFAULT_AUDIENCE.to_string()]
}

fn status(authenticated: bool, audiences: &[&str], username: &str) -> Option<TokenReviewStatus> {
    Some(TokenReviewStatus {
        authenticated: Some(authenticated),
        audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
        user: Some(UserInfo {
            username: Some(username.to_string()),
            ..UserInfo::default()
        }),
        error: None,
    })
}

#[test]
fn an_authenticated_service_account_for_our_audience_is_accepted() {
    let reviewed = status(
        true,
        &["other", DEFAULT_AUDIENCE],
        "system:serviceaccount:bookinfo:reviews-v1.sa",
    );
    assert_eq!(
        judge(reviewed, &ours(), TOKEN),
        Ok(("bookinfo".to_string(), "reviews-v1.sa".to_string()))
    );
}

#[test]
fn an_unauthenticated_token_is_refused_without_echoing_it() {
    let mut reviewed = status(false, &[], "");
    if let Some(s) = reviewed.as_mut() {
        s.error = Some(format!(
            "invalid bearer token {TOKEN}: {}",
            "x".repeat(1000)
        ));
    }
    let Err(AuthnError::Refused(why)) = judge(reviewed, &ours(), TOKEN) else {
        panic!("not refused");
    };
    assert!(
        why.starts_with("invalid bearer token <redacted token>"),
        "{why}"
    );
    assert!(!why.contains(TOKEN));
    assert!(why.len() < 1000, "bounded: {} bytes", why.len());
}

#[test]
fn another_audience_or_user_is_refused() {
    let sa = "system:serviceaccount:bookinfo:reviews";
    for (audiences, username) in [
        (&["other"][..], sa),
        (&[][..], sa),
        (&[DEFAULT_AUDIENCE][..], "capstan-e2e-admin"),
        (&[DEFAULT_AUDIENCE][..], "system:serviceaccount:bookinfo"),
        (
            &[DEFAULT_AUDIENCE][..],
            "system:serviceaccount:bookinfo:a:b",
        ),
        (
            &[DEFAULT_AUDIENCE][..],
            "system:serviceaccount:Bookinfo:reviews",
        ),
        (
            &[DEFAULT_AUDIENCE][..],
            "system:serviceaccount:bookinfo:a/b",
        ),
        (&[DEFAULT_AUDIENCE][..], "system:serviceaccount::reviews"),
        (
            &[DEFAULT_AUDIENCE][..],
            "system:serviceaccount:book.info:reviews",
        ),
        (
            &[DEFAULT_AUDIENCE][..],
            "system:serviceaccount:bookinfo:-reviews",
        ),
    ] {
        let verdict = judge(status(true, audiences, username), &ours(), TOKEN);
        assert!(
            matches!(verdict, Err(AuthnError::Refused(_))),
            "{audiences:?} {username}: {verdict:?}"
        );
    }
    assert!(matches!(
        judge(None, &ours(), TOKEN),
        Err(AuthnError::Unavailable(_))
    ));
}

#[test]
fn no_audiences_means_the_default_one() {
    let config = kube::Config::new("http://127.0.0.1:1".parse().expect("uri"));
    // Building a client needs no connection, only a runtime for its buffer task.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let client = kube::Client::try_from(config).expect("client");
    let authn = TokenReviewAuthenticator::with_audiences(client, Vec::new());
    assert_eq!(authn.audiences(), [DEFAULT_AUDIENCE]);
}

/// A client for a server at `addr` speaking plain HTTP.
fn client_for(addr: std::net::SocketAddr) -> kube::Client {
    let config = kube::Config::new(format!("http://{addr}").parse().expect("uri"));
    kube::Client::try_from(config).expect("client")
}

#[tokio::test]
async fn an_unreachable_apiserver_is_unavailable_not_a_refusal() {
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        listener.local_addr().expect("addr")
    };
    let authn = TokenReviewAuthenticator::new(client_for(closed));
    let err = authn.authenticate(TOKEN).await.expect_err("no apiserver");
    assert!(matches!(err, AuthnError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains(TOKEN), "{err}");
}

#[tokio::test]
async fn a_silent_apiserver_is_unavailable_after_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Accepts connections and never answers.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let timeout = Duration::from_millis(300);
    let authn = TokenReviewAuthenticator::new(client_for(addr)).with_timeout(timeout);
    let started = std::time::Instant::now();
    let err = authn.authenticate(TOKEN).await.expect_err("no answer");
    assert!(matches!(err, AuthnError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("did not answer"), "{err}");
    assert!(started.elapsed() < timeout * 10, "{:?}", started.elapsed());
    silent.abort();
}
