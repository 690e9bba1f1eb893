//! `capstan-demo` (what `make run` runs) on a folder: it must wait for Envoy to acknowledge
//! capstan's config, whatever the folder holds, and report what Envoy actually holds and what
//! answered requests through it. Runs the real binary (with its own capstan, Envoy and
//! upstreams) on a folder unlike ./examples, and on ./examples. Logs:
//! `<target>/debug/e2e-logs/demo_*/`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use capstan_e2e::envoy::loopback;
use capstan_e2e::http::HttpClient;
use capstan_e2e::mesh::TestEnv;
use capstan_e2e::ports::free_port;
use capstan_e2e::process::ChildProcess;

const DEMO_BIN: &str = env!("CARGO_BIN_EXE_capstan-demo");
/// Bounds a hang only: the demo first brings the capstan binary up to date (cargo).
const DEMO_TIMEOUT: Duration = Duration::from_secs(300);
/// The demo's last line once it has printed its report.
const RUNNING: &str = "Press Ctrl-C to stop.";

/// A running demo and the ports it was given.
struct DemoRun {
    process: ChildProcess,
    outbound_port: u16,
}

impl DemoRun {
    /// Starts `capstan-demo --config-dir DIR` on free ports and waits for its report.
    async fn start(env: &TestEnv, config_dir: &Path, namespace: &str) -> anyhow::Result<Self> {
        let outbound_port = free_port()?;
        let demo_logs = env.log_dir.join("demo-run");
        let mut cmd = Command::new(DEMO_BIN);
        cmd.arg("--config-dir")
            .arg(config_dir)
            .args(["--namespace", namespace])
            .args(["--xds-port", &free_port()?.to_string()])
            .args(["--monitoring-port", &free_port()?.to_string()])
            .args(["--admin-port", &free_port()?.to_string()])
            .args(["--outbound-port", &outbound_port.to_string()])
            .arg("--log-dir")
            .arg(&demo_logs);
        let log = env.log_dir.join("demo.log");
        let mut process = ChildProcess::spawn("capstan-demo", &mut cmd, &log)?;
        process
            .wait_for_log("the demo's report", DEMO_TIMEOUT, |l| l == RUNNING)
            .await
            .with_context(|| format!("logs in {}", env.log_dir.display()))?;
        Ok(Self {
            process,
            outbound_port,
        })
    }

    fn output(&self) -> String {
        self.process.log()
    }

    /// Stops the demo as Ctrl-C would; it must stop everything and exit 0.
    fn stop(mut self) -> anyhow::Result<()> {
        self.process.stop();
        let status = self
            .process
            .exit_status()
            .context("the demo did not exit")?;
        let log = self.output();
        ensure!(status.success(), "the demo exited with {status}:\n{log}");
        ensure!(
            log.lines().any(|l| l == "demo: stopped"),
            "the demo did not say it stopped:\n{log}"
        );
        Ok(())
    }
}

/// The line containing `needle`, and the lines after it.
fn line_and_rest<'a>(out: &'a str, needle: &str) -> anyhow::Result<Vec<&'a str>> {
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains(needle))
        .with_context(|| format!("no line with {needle:?} in the demo's output:\n{out}"))?;
    Ok(lines[at..].to_vec())
}

/// The answers printed under the route line containing `route`: (requests, answer line).
fn sample_answers<'a>(out: &'a str, route: &str) -> anyhow::Result<(usize, &'a str)> {
    let rest = line_and_rest(out, route)?;
    ensure!(
        rest.len() >= 3 && rest[1].trim_start().starts_with("$ curl"),
        "no sample request under {route:?}:\n{out}"
    );
    let answers = rest[2].trim();
    let (n, tally) = answers
        .split_once(" requests: ")
        .with_context(|| format!("unexpected answer line {answers:?}"))?;
    Ok((n.parse()?, tally))
}

/// The (count, what) pairs of a tally such as `11 × 200 from reviews v1 (127.0.0.1:1), ...`.
fn tally(line: &str) -> anyhow::Result<Vec<(usize, String)>> {
    line.split(", ")
        .map(|part| {
            let (n, what) = part
                .split_once(" × ")
                .with_context(|| format!("unexpected tally {part:?}"))?;
            Ok((n.parse()?, what.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_a_folder_unlike_the_examples() -> anyhow::Result<()> {
    let env = TestEnv::new("demo_serves_a_folder_unlike_the_examples")?;
    let (blue, green) = (free_port()?, free_port()?);
    // One service in its own namespace, two versions, and a VirtualService that sends /green
    // to green and splits everything else 70/30: nothing like ./examples.
    env.write_config(
        "catalog.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: catalog, namespace: shop}}
spec:
  hosts: [catalog.shop.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8080, name: http-web, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http-web: {blue}}}, labels: {{version: blue}}}}
  - {{address: 127.0.0.1, ports: {{http-web: {green}}}, labels: {{version: green}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: catalog, namespace: shop}}
spec:
  host: catalog.shop.svc.cluster.local
  subsets:
  - {{name: blue, labels: {{version: blue}}}}
  - {{name: green, labels: {{version: green}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: catalog, namespace: shop}}
spec:
  hosts: [catalog]
  http:
  - name: green-preview
    match: [{{uri: {{prefix: /green}}}}]
    route: [{{destination: {{host: catalog, subset: green}}}}]
  - name: canary
    route:
    - {{destination: {{host: catalog, subset: blue}}, weight: 70}}
    - {{destination: {{host: catalog, subset: green}}, weight: 30}}
"
        ),
    )?;
    let demo = DemoRun::start(&env, &env.config_dir, "shop").await?;
    let out = demo.output();

    // Readiness: every type acknowledged, nothing rejected.
    let ready = line_and_rest(&out, "demo: ready: Envoy acknowledged capstan's config")?[0];
    for t in ["cds", "eds", "lds", "rds"] {
        ensure!(ready.contains(&format!("{t} SYNCED at ")), "{ready}");
    }
    ensure!(ready.contains("0 updates rejected"), "{ready}");

    // What Envoy holds.
    line_and_rest(
        &out,
        &format!("listener outbound_http on 0.0.0.0:{}", demo.outbound_port),
    )?;
    // One upstream per endpoint, named by service and subset (listed in address order).
    let prefix = "demo: starting capstan-upstream for the endpoints Envoy holds: ";
    let started = line_and_rest(&out, prefix)?[0];
    let mut instances: Vec<&str> = started.trim_start_matches(prefix).split(", ").collect();
    instances.sort_unstable();
    ensure!(
        instances
            == [
                format!("catalog blue on 127.0.0.1:{blue}"),
                format!("catalog green on 127.0.0.1:{green}"),
            ],
        "{started}"
    );
    let vhost = line_and_rest(&out, "virtual host catalog.shop.svc.cluster.local:8080")?;
    ensure!(
        vhost[1].trim_start().starts_with("domains: ")
            && vhost[1].split(", ").any(|d| d == "catalog"),
        "the short name must be among the domains in namespace shop: {}",
        vhost[1]
    );
    let green_cluster = "outbound|8080|green|catalog.shop.svc.cluster.local";
    let blue_cluster = "outbound|8080|blue|catalog.shop.svc.cluster.local";
    let preview = format!("route green-preview: prefix /green -> {green_cluster}");
    let (n, answers) = sample_answers(&out, &preview)?;
    ensure!(
        answers == format!("{n} × 200 from catalog green (127.0.0.1:{green})"),
        "/green must always reach green: {answers}"
    );
    let canary = format!("route canary: prefix / -> 70% {blue_cluster}, 30% {green_cluster}");
    let (n, answers) = sample_answers(&out, &canary)?;
    let counts = tally(answers)?;
    ensure!(
        counts.iter().map(|(c, _)| c).sum::<usize>() == n
            && counts.iter().all(|(_, what)| {
                what == &format!("200 from catalog blue (127.0.0.1:{blue})")
                    || what == &format!("200 from catalog green (127.0.0.1:{green})")
            }),
        "the canary route's requests must reach blue or green: {answers}"
    );
    ensure!(
        !out.contains("reviews") && !out.contains("jason"),
        "the demo printed something of ./examples for another folder:\n{out}"
    );

    // What it printed is what runs: the listener routes as reported.
    let mut client = HttpClient::new(loopback(demo.outbound_port));
    let reply = client.upstream("catalog", "/green/1", &[]).await?;
    ensure!(
        (reply.service.as_str(), reply.version.as_str()) == ("catalog", "green"),
        "{reply:?}"
    );
    demo.stop()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_examples() -> anyhow::Result<()> {
    let env = TestEnv::new("demo_serves_the_examples")?;
    let examples = capstan_e2e::locate::repo_dir().join("examples");
    let demo = DemoRun::start(&env, &examples, "bookinfo").await?;
    let out = demo.output();

    line_and_rest(&out, "demo: ready: Envoy acknowledged capstan's config")?;
    line_and_rest(
        &out,
        "starting capstan-upstream for the endpoints Envoy holds: productpage v1 on \
         127.0.0.1:19001, reviews v1 on 127.0.0.1:19081, reviews v2 on 127.0.0.1:19082, \
         reviews v3 on 127.0.0.1:19083, ratings v1 on 127.0.0.1:19091",
    )?;
    for host in ["productpage", "ratings", "reviews"] {
        line_and_rest(
            &out,
            &format!("virtual host {host}.bookinfo.svc.cluster.local:9080"),
        )?;
    }
    let (n, answers) = sample_answers(
        &out,
        "route jason-to-v2: prefix / and header end-user exact \"jason\" -> \
         outbound|9080|v2|reviews.bookinfo.svc.cluster.local",
    )?;
    ensure!(
        answers == format!("{n} × 200 from reviews v2 (127.0.0.1:19082)"),
        "jason must reach reviews v2: {answers}"
    );
    let (n, answers) = sample_answers(
        &out,
        "route split-v1-v3: prefix / -> 50% outbound|9080|v1|reviews.bookinfo.svc.cluster.local, \
         50% outbound|9080|v3|reviews.bookinfo.svc.cluster.local",
    )?;
    let counts = tally(answers)?;
    ensure!(
        counts.iter().map(|(c, _)| c).sum::<usize>() == n
            && counts.iter().all(|(_, what)| {
                what == "200 from reviews v1 (127.0.0.1:19081)"
                    || what == "200 from reviews v3 (127.0.0.1:19083)"
            }),
        "the split must reach v1 or v3 only: {answers}"
    );
    let (n, answers) = sample_answers(
        &out,
        "prefix / -> outbound|9080|v1|ratings.bookinfo.svc.cluster.local",
    )?;
    ensure!(
        answers == format!("{n} × 200 from ratings v1 (127.0.0.1:19091)"),
        "{answers}"
    );
    demo.stop()
}
