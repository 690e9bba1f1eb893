//! capstan's bench server as a real process, driven by the load generator: every simulated
//! proxy syncs and receives each change, over SotW and over Delta. Counts only, no timings.

use std::path::Path;
use std::time::Duration;

use capstan_load::server_process::ServerProcess;
use capstan_load::{LoadConfig, LoadReport, Protocol, Scenario};

const PROXIES: usize = 20;

async fn start_bench_server(services: usize, endpoints: usize) -> ServerProcess {
    ServerProcess::start(
        Path::new(env!("CARGO_BIN_EXE_capstan-bench-server")),
        &[],
        services,
        endpoints,
        &[],
        Duration::from_secs(60),
    )
    .await
    .expect("bench server starts")
}

/// `PROXIES` proxies of `protocol`, two rounds of each change, generous timeouts.
fn load_config(server: &ServerProcess, protocol: Protocol) -> LoadConfig {
    let mut config = LoadConfig::new(server.ads, server.control, PROXIES, protocol);
    config.rounds = 2;
    config.connect_concurrency = 8;
    config.pause = Duration::from_millis(50);
    config.round_timeout = Duration::from_secs(120);
    config.sync_timeout = Duration::from_secs(120);
    config.server_pid = Some(server.pid());
    config
}

async fn run_against_capstan(protocol: Protocol) -> LoadReport {
    let server = start_bench_server(50, 4).await;
    let report = capstan_load::run(&load_config(&server, protocol))
        .await
        .expect("load runs");
    server.stop().await.expect("bench server stops");
    report
}

fn assert_everyone_converged(report: &LoadReport) {
    assert_eq!(report.failures, 0, "{}", report.table());
    assert_eq!(report.sync.synced, PROXIES, "{}", report.table());
    assert!(report.sync.bytes > 0);
    assert!(report.server_rss.is_some(), "server memory is measured");
    for scenario in [Scenario::Endpoint, Scenario::All] {
        let measured = report.scenario(scenario).expect("scenario ran");
        assert_eq!(measured.rounds.len(), 2);
        for round in &measured.rounds {
            assert_eq!(round.latency.count, PROXIES);
            assert_eq!(
                round.latency.arrived,
                PROXIES,
                "{}: {}",
                round.change,
                report.table()
            );
            assert!(round.bytes > 0, "{}", round.change);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_proxies_sync_and_converge() {
    let report = run_against_capstan(Protocol::Delta).await;
    assert_everyone_converged(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_proxies_sync_and_converge() {
    let report = run_against_capstan(Protocol::Sotw).await;
    assert_everyone_converged(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_streams_sync_and_converge() {
    let server = start_bench_server(10, 2).await;
    let mut config = LoadConfig::new(server.ads, server.control, PROXIES, Protocol::Delta);
    config.streams_per_connection = 5;
    config.scenarios = vec![Scenario::Endpoint];
    config.rounds = 1;
    config.pause = Duration::from_millis(50);
    config.round_timeout = Duration::from_secs(120);
    let report = capstan_load::run(&config).await.expect("load runs");
    server.stop().await.expect("bench server stops");
    assert_eq!(report.failures, 0, "{}", report.table());
    assert_eq!(report.sync.synced, PROXIES, "{}", report.table());
    let endpoint = report.scenario(Scenario::Endpoint).expect("ran");
    assert_eq!(endpoint.overall.arrived, PROXIES, "{}", report.table());
}

/// A few streams open but never read (a window of 1 KiB, smaller than the first response):
/// every other proxy still gets every change. Afterwards a stuck stream is read and still
/// gets its first response, so it was held back, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_proxies_do_not_hold_back_the_others() {
    use capstan_load::proxy::grpc;
    use capstan_load::request;
    use capstan_xds::ads::service::DELTA_PATH;

    const WINDOW: u32 = 1024;
    let server = start_bench_server(50, 4).await;
    let mut stuck = Vec::new();
    for k in 0..4 {
        let connection = grpc::connect(server.ads, WINDOW).await.expect("connects");
        let first = request::delta(
            capstan_xds::type_url::CLUSTER,
            "",
            &[],
            &[],
            &request::encode_node(1000 + k),
        );
        let stream = grpc::open(
            connection,
            server.ads,
            DELTA_PATH,
            grpc::frame_all(&[first]),
        )
        .await
        .expect("stream opens");
        stuck.push(stream);
    }

    let report = capstan_load::run(&load_config(&server, Protocol::Delta))
        .await
        .expect("load runs");
    assert_everyone_converged(&report);

    let first = tokio::time::timeout(Duration::from_secs(60), stuck[0].message())
        .await
        .expect("the held-back response arrives once read")
        .expect("the stream is healthy")
        .expect("a response, not the end of the stream");
    assert!(
        first.len() > WINDOW as usize,
        "the first response ({} bytes) could not pass a {WINDOW}-byte window unread",
        first.len()
    );
    drop(stuck);
    server.stop().await.expect("bench server stops");
}
