//! capstan + real Envoy: the HTTP policies of a VirtualService route — retries, fault
//! injection, mirroring, header operations, CORS — proven by the traffic they shape. Each
//! test writes a VirtualService for the `reviews` service (v1/v2/v3 upstreams on loopback),
//! starts capstan and one Envoy, sends requests through Envoy and checks what the client got
//! and what each upstream instance counted (`capstan-upstream` counts the requests it
//! answers, can be told to fail, and echoes the headers it received).
//! Logs: `<target>/debug/e2e-logs/<test name>/`.
//!
//! Envoy must be installed (`make test` installs it); a missing Envoy fails the tests.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use capstan_e2e::envoy::dynamic_virtual_hosts;
use capstan_e2e::fixtures::REVIEWS_HOST;
use capstan_e2e::http::HttpResponse;
use capstan_e2e::mesh::{CONFIG_TIMEOUT, ReviewsMesh};
use hyper::{Method, StatusCode};

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
const PATH: &str = "/reviews/1";

async fn start(name: &str, http: &str) -> anyhow::Result<ReviewsMesh> {
    ReviewsMesh::start_http(name, Path::new(UPSTREAM_BIN), http).await
}

/// A route for requests carrying `x-case: <case>`, to `subset`, with `policy` (YAML lines
/// indented as route fields).
fn case_route(case: &str, subset: &str, policy: &str) -> String {
    format!(
        "  - name: {case}
    match: [{{headers: {{x-case: {{exact: {case}}}}}}}]
    route: [{{destination: {{host: {REVIEWS_HOST}, subset: {subset}}}}}]
{policy}"
    )
}

/// The route for every other request.
fn default_route(subset: &str) -> String {
    format!("  - route: [{{destination: {{host: {REVIEWS_HOST}, subset: {subset}}}}}]\n")
}

fn case(name: &str) -> [(&str, &str); 1] {
    [("x-case", name)]
}

/// One request through Envoy to `reviews`, whatever the status.
async fn send(mesh: &mut ReviewsMesh, headers: &[(&str, &str)]) -> anyhow::Result<HttpResponse> {
    mesh.proxy.get("reviews", PATH, headers).await
}

/// A response header's value.
fn header(resp: &HttpResponse, name: &str) -> Option<String> {
    resp.headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Requests answered by each instance of reviews: v1, v2, v3.
async fn counts(mesh: &ReviewsMesh) -> anyhow::Result<[u64; 3]> {
    let mut out = [0; 3];
    for (i, v) in ["v1", "v2", "v3"].iter().enumerate() {
        out[i] = mesh.upstreams.count("reviews", v).await?;
    }
    Ok(out)
}

/// Sends `n` requests with `headers`; each must end with `status`. Returns how many
/// requests each instance answered meanwhile.
async fn requests_per_instance(
    mesh: &mut ReviewsMesh,
    headers: &[(&str, &str)],
    n: u64,
    status: StatusCode,
) -> anyhow::Result<[u64; 3]> {
    let before = counts(mesh).await?;
    for i in 0..n {
        let resp = send(mesh, headers).await?;
        ensure!(
            resp.status == status,
            "request {i} with {headers:?}: expected {status}, got {}: {}",
            resp.status,
            resp.text().trim()
        );
    }
    let after = counts(mesh).await?;
    Ok([0, 1, 2].map(|i| after[i] - before[i]))
}

/// `retries: {attempts: 3, retryOn: 5xx}` tries a failing subset 1 + 3 times per request;
/// `attempts: 0` once; no `retries` at all gets Istio's default: a 503 is tried 1 + 2
/// times, a 500 once (the default retries only 503 among statuses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_attempts_zero_and_istio_default() -> anyhow::Result<()> {
    let http = [
        case_route(
            "retry-3",
            "v1",
            "    retries: {attempts: 3, retryOn: 5xx}\n",
        ),
        case_route("no-retry", "v1", "    retries: {attempts: 0}\n"),
        default_route("v2"),
    ]
    .concat();
    let mut mesh = start("retries_attempts_zero_and_istio_default", &http).await?;
    mesh.wait_for_all(&case("retry-3"), "v1", 5).await?;
    mesh.expect_all(&case("no-retry"), "v1", 5).await?;
    mesh.expect_all(&[], "v2", 5).await?;

    const N: u64 = 5;
    mesh.upstreams.fail("reviews", "v1", 503).await?;
    let retried = requests_per_instance(
        &mut mesh,
        &case("retry-3"),
        N,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await?;
    ensure!(
        retried == [N * (1 + 3), 0, 0],
        "attempts: 3: expected v1 to answer {} requests for {N}, got {retried:?} (v1, v2, v3)",
        N * 4
    );
    let once = requests_per_instance(
        &mut mesh,
        &case("no-retry"),
        N,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await?;
    ensure!(
        once == [N, 0, 0],
        "attempts: 0: expected v1 to answer {N} requests, got {once:?}"
    );
    mesh.upstreams.recover("reviews", "v1").await?;

    let default = requests_per_instance(
        &mut mesh,
        &[("x-upstream-status", "503")],
        N,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await?;
    ensure!(
        default == [0, N * (1 + 2), 0],
        "Istio's default on 503: expected v2 to answer {} requests for {N}, got {default:?}",
        N * 3
    );
    let not_retried = requests_per_instance(
        &mut mesh,
        &[("x-upstream-status", "500")],
        N,
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await?;
    ensure!(
        not_retried == [0, N, 0],
        "Istio's default on 500: expected v2 to answer {N} requests, got {not_retried:?}"
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

/// Routes without `retries` share Istio's default, which Envoy is given once on the virtual
/// host instead of on each route (Envoy builds a policy per route that states one): each
/// route still retries a 503 twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_retry_policy_said_once_per_virtual_host_applies_to_every_route()
-> anyhow::Result<()> {
    let http = [case_route("matched", "v1", ""), default_route("v2")].concat();
    let mut mesh = start("default_retries_on_the_virtual_host", &http).await?;
    mesh.wait_for_all(&case("matched"), "v1", 5).await?;
    mesh.expect_all(&[], "v2", 5).await?;

    // What Envoy holds: the policy on the virtual host, none on its routes.
    let dump = mesh.envoy.config_dump(false).await?;
    let name = format!("{REVIEWS_HOST}:9080");
    let reviews = dynamic_virtual_hosts(&dump)
        .find(|v| v["name"] == name.as_str())
        .context("reviews' virtual host in Envoy's config")?;
    ensure!(
        reviews["retry_policy"]["num_retries"] == 2,
        "expected Istio's default on the virtual host: {reviews}"
    );
    let routes = reviews["routes"].as_array().context("routes")?;
    ensure!(
        routes.len() == 2 && routes.iter().all(|r| r["route"]["retry_policy"].is_null()),
        "expected two routes without a policy of their own: {routes:?}"
    );

    const N: u64 = 5;
    for (headers, subset, index) in [(&case("matched")[..], "v1", 0), (&[][..], "v2", 1)] {
        mesh.upstreams.fail("reviews", subset, 503).await?;
        let tried =
            requests_per_instance(&mut mesh, headers, N, StatusCode::SERVICE_UNAVAILABLE).await?;
        mesh.upstreams.recover("reviews", subset).await?;
        let mut expected = [0; 3];
        expected[index] = N * (1 + 2);
        ensure!(
            tried == expected,
            "{subset}: expected {expected:?} requests (v1, v2, v3) for {N}, got {tried:?}"
        );
    }
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A redirect is answered by Envoy with the Location the VirtualService asks for, the port
/// of `derivePort: FROM_REQUEST_PORT` being the one the request came to; a direct response
/// with its status and body (text, or bytes given in base64); a rewrite reaches the upstream
/// with the new path and Host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_direct_responses_and_rewrites_as_client_and_upstream_see_them()
-> anyhow::Result<()> {
    let redirect = |case: &str, redirect: &str| {
        format!(
            "  - name: {case}
    match: [{{headers: {{x-case: {{exact: {case}}}}}}}]
    redirect: {redirect}
"
        )
    };
    let http = [
        redirect(
            "moved",
            "{uri: /new/place, authority: shop.example, redirectCode: 302}",
        ),
        redirect(
            "same-port",
            "{authority: other.example, derivePort: FROM_REQUEST_PORT}",
        ),
        "  - name: answered
    match: [{headers: {x-case: {exact: answered}}}]
    directResponse: {status: 418, body: {string: teapot}}
  - name: answered-bytes
    match: [{headers: {x-case: {exact: answered-bytes}}}]
    directResponse: {status: 503, body: {bytes: 3q2+7w==}}
"
        .to_string(),
        case_route(
            "rewritten",
            "v2",
            "    rewrite: {uri: /v2/, authority: reviews-internal}\n",
        ),
        default_route("v1"),
    ]
    .concat();
    let mut mesh = start("redirects_and_rewrites", &http).await?;
    mesh.wait_for_all(&case("rewritten"), "v2", 5).await?;

    let moved = send(&mut mesh, &case("moved")).await?;
    ensure!(
        moved.status == StatusCode::FOUND
            && header(&moved, "location").as_deref() == Some("http://shop.example/new/place"),
        "redirect with uri, authority and 302: got {} {:?}",
        moved.status,
        header(&moved, "location")
    );
    let same_port = send(&mut mesh, &case("same-port")).await?;
    ensure!(
        same_port.status == StatusCode::MOVED_PERMANENTLY
            && header(&same_port, "location").as_deref()
                == Some(&format!("http://other.example:9080{PATH}")[..]),
        "derivePort FROM_REQUEST_PORT: got {} {:?}",
        same_port.status,
        header(&same_port, "location")
    );
    let answered = send(&mut mesh, &case("answered")).await?;
    ensure!(
        answered.status == StatusCode::IM_A_TEAPOT && answered.body.as_ref() == b"teapot",
        "directResponse with a string body: got {} {:?}",
        answered.status,
        answered.body
    );
    let bytes = send(&mut mesh, &case("answered-bytes")).await?;
    ensure!(
        bytes.status == StatusCode::SERVICE_UNAVAILABLE
            && bytes.body.as_ref() == [0xde, 0xad, 0xbe, 0xef],
        "directResponse with a bytes body: got {} {:?}",
        bytes.status,
        bytes.body
    );
    let reply = send(&mut mesh, &case("rewritten"))
        .await?
        .upstream_reply()
        .context("the rewritten request")?;
    // The route matched no URI prefix: the whole path's "/" prefix is what is replaced.
    ensure!(
        reply.version == "v2"
            && reply.path == format!("/v2/{}", &PATH[1..])
            && reply.host == "reviews-internal",
        "rewrite: the upstream saw {reply:?}"
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

/// An abort at 100% answers every request itself, so the upstream sees none; one without a
/// percentage aborts none; a fixed delay at 100% holds each request at least that long; an
/// abort at 50% hits about half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_abort_delay_and_percentage() -> anyhow::Result<()> {
    let http = [
        case_route(
            "abort-all",
            "v1",
            "    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n",
        ),
        case_route(
            "delay",
            "v1",
            "    fault: {delay: {fixedDelay: 500ms, percentage: {value: 100}}}\n",
        ),
        case_route(
            "abort-half",
            "v3",
            "    fault: {abort: {httpStatus: 503, percentage: {value: 50}}}\n",
        ),
        // As istiod, no percentage is passed on when none is written.
        case_route(
            "abort-no-percentage",
            "v1",
            "    fault: {abort: {httpStatus: 418}}\n",
        ),
        default_route("v2"),
    ]
    .concat();
    let mut mesh = start("fault_abort_delay_and_percentage", &http).await?;
    capstan_e2e::wait_until("the abort fault in force", CONFIG_TIMEOUT, async || {
        let resp = send(&mut mesh, &case("abort-all")).await?;
        ensure!(
            resp.status == StatusCode::IM_A_TEAPOT,
            "got {}",
            resp.status
        );
        Ok(())
    })
    .await
    .with_context(|| format!("logs in {}", mesh.env.log_dir.display()))?;

    let aborted =
        requests_per_instance(&mut mesh, &case("abort-all"), 20, StatusCode::IM_A_TEAPOT).await?;
    ensure!(
        aborted == [0, 0, 0],
        "aborted requests reached upstreams: {aborted:?}"
    );

    // Envoy aborts no request when the abort has no percentage.
    let unset =
        requests_per_instance(&mut mesh, &case("abort-no-percentage"), 20, StatusCode::OK).await?;
    ensure!(unset == [20, 0, 0], "abort without percentage: {unset:?}");

    let delays_before = delays_injected(&mesh).await?;
    for i in 0..3 {
        let started = Instant::now();
        let reply = mesh.reviews("reviews", &case("delay")).await?;
        let took = started.elapsed();
        ensure!(
            reply.version == "v1",
            "delayed request {i} reached {reply:?}"
        );
        // Envoy arms the timer from its event loop's cached clock, which can lag the real
        // one by a few milliseconds on a busy machine: fires were seen 2 µs and 2.1 ms
        // before the 500 ms were up, as measured from here. An undelayed request takes a few
        // milliseconds, so 450 ms still tells the two apart.
        ensure!(
            took >= Duration::from_millis(450),
            "delayed request {i} took only {took:?}"
        );
    }
    let delays = delays_injected(&mesh).await? - delays_before;
    ensure!(
        delays == 3,
        "Envoy counted {delays} injected delays for 3 requests"
    );

    const N: u64 = 400;
    let before = counts(&mesh).await?;
    let mut aborted = 0u64;
    for i in 0..N {
        let resp = send(&mut mesh, &case("abort-half")).await?;
        match resp.status {
            StatusCode::SERVICE_UNAVAILABLE => aborted += 1,
            StatusCode::OK => {}
            other => anyhow::bail!("request {i}: unexpected {other}: {}", resp.text()),
        }
    }
    let after = counts(&mesh).await?;
    let (n, p) = (N as f64, 0.5);
    let sigma = (n * p * (1.0 - p)).sqrt();
    ensure!(
        (aborted as f64 - n * p).abs() <= 5.0 * sigma,
        "{aborted} of {N} aborted; expected {} ± {:.0} (5 sigma)",
        n * p,
        5.0 * sigma
    );
    // Exactly the requests that were not aborted reached v3 (an injected 503 is not retried:
    // the fault filter answers before the router).
    ensure!(
        after[2] - before[2] == N - aborted,
        "v3 answered {} requests; {} were not aborted",
        after[2] - before[2],
        N - aborted
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A route to v1 mirroring to v2 at 100%: the client always gets v1, and v2 gets a copy of
/// every request (mirrors are sent asynchronously, so their count is polled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_every_request_to_v2() -> anyhow::Result<()> {
    let http = [
        case_route(
            "mirror",
            "v1",
            &format!(
                "    mirror: {{host: {REVIEWS_HOST}, subset: v2}}\n    mirrorPercentage: {{value: 100}}\n"
            ),
        ),
        default_route("v3"),
    ]
    .concat();
    let mut mesh = start("mirror_copies_every_request_to_v2", &http).await?;
    // In force once a mirrored request shows up on v2 (nothing else routes there).
    capstan_e2e::wait_until("the mirror in force", CONFIG_TIMEOUT, async || {
        mesh.expect_all(&case("mirror"), "v1", 1).await?;
        let v2 = mesh.upstreams.count("reviews", "v2").await?;
        ensure!(v2 > 0, "v2 has seen no mirrored request yet");
        Ok(())
    })
    .await
    .with_context(|| format!("logs in {}", mesh.env.log_dir.display()))?;
    let baseline = settled_count(&mesh, "v2").await?;

    const N: u64 = 50;
    mesh.expect_all(&case("mirror"), "v1", N as usize).await?;
    let expected = baseline + N;
    capstan_e2e::wait_until("every request mirrored to v2", CONFIG_TIMEOUT, async || {
        let v2 = mesh.upstreams.count("reviews", "v2").await?;
        ensure!(
            v2 >= expected,
            "v2 has {v2} requests, waiting for {expected}"
        );
        Ok(())
    })
    .await?;
    let v2 = settled_count(&mesh, "v2").await?;
    ensure!(
        v2 == expected,
        "v2 answered {} mirrored requests for {N} sent",
        v2 - baseline
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

/// The delays Envoy's fault filter injected on the outbound listener so far.
async fn delays_injected(mesh: &ReviewsMesh) -> anyhow::Result<u64> {
    let stats = mesh.envoy.stats("fault.delays_injected$").await?;
    stats
        .iter()
        .find(|(name, _)| name.ends_with("outbound_http.fault.delays_injected"))
        .map(|(_, n)| *n)
        .with_context(|| format!("no fault.delays_injected stat for outbound_http: {stats:?}"))
}

/// An instance's request count once it stopped moving (two reads 300 ms apart agree).
async fn settled_count(mesh: &ReviewsMesh, version: &str) -> anyhow::Result<u64> {
    let mut last = mesh.upstreams.count("reviews", version).await?;
    capstan_e2e::wait_until("the count to settle", CONFIG_TIMEOUT, async || {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = mesh.upstreams.count("reviews", version).await?;
        let settled = now == last;
        last = now;
        ensure!(settled, "still moving: {now}");
        Ok(now)
    })
    .await
}

/// Request headers set, added and removed as the upstream sees them; response headers as
/// the client sees them; per-destination headers of a split only on their destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_operations_on_requests_and_responses() -> anyhow::Result<()> {
    let http = [
        case_route(
            "headers",
            "v1",
            "    headers:
      request:
        set: {x-set: route}
        add: {x-added: route}
        remove: [x-remove-me]
      response:
        set: {x-resp-set: set}
        add: {x-resp-add: added}
        remove: [content-type]
",
        ),
        format!(
            "  - name: split
    match: [{{headers: {{x-case: {{exact: split}}}}}}]
    route:
    - destination: {{host: {REVIEWS_HOST}, subset: v1}}
      weight: 50
      headers: {{request: {{set: {{x-dest: v1}}}}, response: {{add: {{x-from: v1}}}}}}
    - destination: {{host: {REVIEWS_HOST}, subset: v2}}
      weight: 50
      headers: {{request: {{set: {{x-dest: v2}}}}}}
"
        ),
        default_route("v3"),
    ]
    .concat();
    let mut mesh = start("header_operations_on_requests_and_responses", &http).await?;
    mesh.wait_for_all(&case("headers"), "v1", 3).await?;

    let sent = [
        ("x-case", "headers"),
        ("x-set", "client"),
        ("x-added", "client"),
        ("x-remove-me", "1"),
    ];
    let resp = send(&mut mesh, &sent).await?;
    let reply = resp.upstream_reply()?;
    let seen = |name: &str| reply.headers.get(name).map(String::as_str);
    ensure!(
        seen("x-set") == Some("route"),
        "set: upstream saw {:?}",
        seen("x-set")
    );
    ensure!(
        seen("x-added") == Some("client,route"),
        "add: upstream saw {:?}",
        seen("x-added")
    );
    ensure!(
        seen("x-remove-me").is_none(),
        "remove: upstream saw x-remove-me: {:?}",
        seen("x-remove-me")
    );
    ensure!(
        header(&resp, "x-resp-set").as_deref() == Some("set"),
        "response set: client got x-resp-set {:?}",
        header(&resp, "x-resp-set")
    );
    ensure!(
        header(&resp, "x-resp-add").as_deref() == Some("added"),
        "response add: client got x-resp-add {:?}",
        header(&resp, "x-resp-add")
    );
    // The upstream answers with a content-type (as the default route shows); the route
    // removes it.
    let plain = send(&mut mesh, &[]).await?;
    ensure!(
        header(&plain, "content-type").as_deref() == Some("application/json"),
        "content-type without the route's operations: {:?}",
        plain.headers
    );
    ensure!(
        header(&resp, "content-type").is_none(),
        "response remove: client got content-type {:?}",
        header(&resp, "content-type")
    );

    // Each destination of the split adds its own headers only.
    let mut by_version = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let resp = send(&mut mesh, &case("split")).await?;
        let reply = resp.upstream_reply()?;
        let dest = reply.headers.get("x-dest").cloned();
        ensure!(
            dest.as_deref() == Some(reply.version.as_str()),
            "{} saw x-dest {dest:?}",
            reply.version
        );
        let from = header(&resp, "x-from");
        let expected_from = (reply.version == "v1").then(|| "v1".to_string());
        ensure!(
            from == expected_from,
            "a reply from {} carried x-from {from:?}",
            reply.version
        );
        *by_version.entry(reply.version).or_insert(0) += 1;
    }
    ensure!(
        by_version.len() == 2,
        "40 requests over a 50/50 split reached only {by_version:?}"
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A CORS preflight from an allowed origin is answered by Envoy with the policy; one from
/// another origin gets no `access-control-allow-origin` and goes on to the service (Istio's
/// default for unmatched preflights); an actual request from the allowed origin gets the
/// allowed origin and exposed headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_allowed_and_refused_origins() -> anyhow::Result<()> {
    let http = format!(
        "  - route: [{{destination: {{host: {REVIEWS_HOST}, subset: v1}}}}]
    corsPolicy:
      allowOrigins: [{{exact: 'https://ok.example'}}]
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      exposeHeaders: [x-exposed]
      maxAge: 1h
      allowCredentials: true
"
    );
    let mut mesh = start("cors_preflight_allowed_and_refused_origins", &http).await?;
    let preflight = |origin: &'static str| {
        [
            ("origin", origin),
            ("access-control-request-method", "POST"),
        ]
    };
    let allowed = capstan_e2e::wait_until("the CORS policy in force", CONFIG_TIMEOUT, async || {
        let resp = mesh
            .proxy
            .request(
                Method::OPTIONS,
                "reviews",
                PATH,
                &preflight("https://ok.example"),
            )
            .await?;
        ensure!(
            header(&resp, "access-control-allow-origin").is_some(),
            "no access-control-allow-origin: {} {:?}",
            resp.status,
            resp.headers
        );
        Ok(resp)
    })
    .await
    .with_context(|| format!("logs in {}", mesh.env.log_dir.display()))?;
    ensure!(
        allowed.status == StatusCode::OK,
        "preflight: {}",
        allowed.status
    );
    let expect = [
        ("access-control-allow-origin", "https://ok.example"),
        ("access-control-allow-methods", "GET,POST"),
        ("access-control-allow-headers", "x-custom"),
        ("access-control-max-age", "3600"),
        ("access-control-allow-credentials", "true"),
    ];
    for (name, value) in expect {
        ensure!(
            header(&allowed, name).as_deref() == Some(value),
            "preflight from the allowed origin: {name} is {:?}, expected {value}",
            header(&allowed, name)
        );
    }

    // Envoy answers an allowed preflight itself; one from another origin is forwarded.
    let before = mesh.upstreams.count("reviews", "v1").await?;
    let resp = mesh
        .proxy
        .request(
            Method::OPTIONS,
            "reviews",
            PATH,
            &preflight("https://ok.example"),
        )
        .await?;
    ensure!(header(&resp, "access-control-allow-origin").is_some());
    let after_allowed = mesh.upstreams.count("reviews", "v1").await?;
    ensure!(
        after_allowed == before,
        "an allowed preflight reached the upstream ({before} -> {after_allowed})"
    );
    let refused = mesh
        .proxy
        .request(
            Method::OPTIONS,
            "reviews",
            PATH,
            &preflight("https://evil.example"),
        )
        .await?;
    ensure!(
        header(&refused, "access-control-allow-origin").is_none(),
        "a preflight from another origin got access-control-allow-origin {:?}",
        header(&refused, "access-control-allow-origin")
    );
    let after_refused = mesh.upstreams.count("reviews", "v1").await?;
    ensure!(
        after_refused == after_allowed + 1,
        "the unmatched preflight was not forwarded ({after_allowed} -> {after_refused})"
    );

    let actual = mesh
        .proxy
        .get("reviews", PATH, &[("origin", "https://ok.example")])
        .await?;
    ensure!(
        actual.upstream_reply()?.version == "v1",
        "actual request: {}",
        actual.text()
    );
    ensure!(
        header(&actual, "access-control-allow-origin").as_deref() == Some("https://ok.example"),
        "actual request from the allowed origin: {:?}",
        actual.headers
    );
    ensure!(
        header(&actual, "access-control-expose-headers").as_deref() == Some("x-exposed"),
        "actual request: expose headers {:?}",
        header(&actual, "access-control-expose-headers")
    );
    let other = mesh
        .proxy
        .get("reviews", PATH, &[("origin", "https://evil.example")])
        .await?;
    ensure!(
        header(&other, "access-control-allow-origin").is_none(),
        "actual request from another origin got {:?}",
        header(&other, "access-control-allow-origin")
    );
    mesh.envoy.ensure_no_rejected_updates().await
}
