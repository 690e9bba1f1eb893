//! `capstan-demo` (what `make run` runs): capstan serving a folder of Istio YAML to one real
//! Envoy on loopback, and what that Envoy made of it.
//!
//! Starts `capstan run --config-dir DIR` and one Envoy bootstrapped to it over ADS, then waits
//! until Envoy has acknowledged capstan's config: capstan is ready, its `/debug/syncz` shows
//! every xDS type of this proxy SYNCED at the current snapshot, and Envoy's own stats show
//! CDS and LDS updated (at that version, over SotW), nothing rejected and no cluster or
//! listener still warming. Nothing about the folder's content is assumed.
//!
//! Then it reads Envoy's `/config_dump` and prints what Envoy holds: listeners, clusters and
//! their endpoints, and per route configuration the virtual hosts (domains) and routes. For
//! every loopback endpoint Envoy holds it starts a `capstan-upstream` instance (named after the
//! service's short name and the subsets the endpoint is in) unless the port is taken, and sends
//! a few requests per route through Envoy, printing what answered. Runs until Ctrl-C (or
//! SIGTERM), then stops everything it started.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use capstan_e2e::capstan::Capstan;
use capstan_e2e::envoy::{AdsMode, Bootstrap, Envoy, loopback};
use capstan_e2e::http::{HttpClient, HttpResponse, UpstreamReply};
use capstan_e2e::locate;
use capstan_e2e::process::ChildProcess;
use capstan_e2e::upstreams::Upstreams;
use capstan_e2e::wait_until;
use clap::Parser;
use serde_json::Value;

/// The xDS types a sidecar subscribes to, as `/debug/syncz` names them.
const XDS_TYPES: [&str; 4] = ["cds", "eds", "lds", "rds"];
/// At most this many virtual hosts get sample requests (a big folder still prints them all).
const MAX_SAMPLED_VIRTUAL_HOSTS: usize = 20;
/// At most this many clusters are listed one per line.
const MAX_LISTED_CLUSTERS: usize = 50;
/// Requests per route: a weighted route gets more, to show the split.
const SAMPLES_PER_ROUTE: usize = 3;
const SAMPLES_PER_WEIGHTED_ROUTE: usize = 20;

#[derive(Parser, Debug)]
#[command(
    about = "Run capstan on a folder of Istio YAML with one real Envoy on loopback, and show \
             what Envoy received and how it routes"
)]
struct Args {
    /// Directory with the Istio YAML capstan serves (watched: edit it while the demo runs).
    #[arg(long, default_value_os_t = locate::repo_dir().join("examples"))]
    config_dir: PathBuf,
    /// capstan's ADS port on 127.0.0.1.
    #[arg(long, default_value_t = 15010)]
    xds_port: u16,
    /// capstan's monitoring port on 127.0.0.1 (/metrics, /readyz, /debug/syncz).
    #[arg(long, default_value_t = 15014)]
    monitoring_port: u16,
    /// Port of Envoy's outbound HTTP listener.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Envoy admin port on 127.0.0.1.
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// The Envoy's namespace (short host names resolve in it, as for a sidecar there).
    #[arg(long, default_value = "bookinfo")]
    namespace: String,
    /// Use Delta xDS instead of state-of-the-world.
    #[arg(long)]
    delta: bool,
    /// Where the logs go (default: `<target dir>/<profile>/e2e-logs/demo`, emptied first).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// How long to wait for Envoy to acknowledge capstan's config, in seconds.
    #[arg(long, default_value_t = 60)]
    ready_timeout_secs: u64,
}

/// Everything the demo started; dropping it stops all processes (Envoy first).
struct Demo {
    envoy: Envoy,
    capstan: ChildProcess,
    upstreams: Option<Upstreams>,
}

impl Demo {
    /// The first child that has exited, as an error with its log tail.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(upstreams) = &mut self.upstreams {
            upstreams.process.ensure_running()?;
        }
        self.capstan.ensure_running()?;
        self.envoy.process().ensure_running()
    }
}

fn step(msg: &str) {
    println!("demo: {msg}");
}

async fn start(args: &Args, log_dir: &Path) -> anyhow::Result<(Demo, Bootstrap)> {
    let envoy_bin = locate::envoy_bin()?;
    let capstan_bin = locate::capstan_bin()?;
    ensure!(
        args.config_dir.is_dir(),
        "config dir {} does not exist",
        args.config_dir.display()
    );

    step(&format!(
        "starting capstan on {} (ADS on 127.0.0.1:{}, monitoring on 127.0.0.1:{}) ...",
        args.config_dir.display(),
        args.xds_port,
        args.monitoring_port
    ));
    let mut cmd = Command::new(&capstan_bin);
    cmd.arg("run")
        .arg("--config-dir")
        .arg(&args.config_dir)
        .arg("--xds-addr")
        .arg(format!("127.0.0.1:{}", args.xds_port))
        .arg("--monitoring-addr")
        .arg(format!("127.0.0.1:{}", args.monitoring_port))
        .arg("--outbound-port")
        .arg(args.outbound_port.to_string());
    let mut capstan = Capstan::spawn(cmd, log_dir, "capstan")?;
    Capstan::wait_listening(&mut capstan).await?;

    step(&format!(
        "starting Envoy (admin 127.0.0.1:{}, namespace {}) ...",
        args.admin_port, args.namespace
    ));
    let mode = if args.delta {
        AdsMode::Delta
    } else {
        AdsMode::Sotw
    };
    let mut bootstrap = Bootstrap::new(mode, args.xds_port);
    bootstrap.admin_port = args.admin_port;
    bootstrap.workload = "demo-0".to_string();
    bootstrap.namespace = args.namespace.clone();
    let envoy = Envoy::start(&envoy_bin, &bootstrap, log_dir, "envoy")
        .await
        .with_context(|| format!("is port {} free?", args.admin_port))?;
    Ok((
        Demo {
            envoy,
            capstan,
            upstreams: None,
        },
        bootstrap,
    ))
}

// ---------------------------------------------------------------------------------------
// Readiness: Envoy acknowledged capstan's config.

/// What showed that Envoy holds capstan's current config.
#[derive(Debug)]
struct Acked {
    snapshot_version: u64,
    /// Per xDS type: syncz status and the version Envoy acknowledged.
    types: Vec<(String, String, Option<u64>)>,
    /// Envoy's `*update_success` counters for CDS, LDS and each RDS subscription.
    updates: BTreeMap<String, u64>,
}

/// GET a path of capstan's monitoring server, requiring 200.
async fn monitoring_get(port: u16, path: &str) -> anyhow::Result<HttpResponse> {
    let addr = loopback(port);
    let resp = HttpClient::new(addr)
        .get(&addr.to_string(), path, &[])
        .await?;
    ensure!(
        resp.status.is_success(),
        "capstan {path} answered {}: {}",
        resp.status,
        resp.text().trim()
    );
    Ok(resp)
}

async fn snapshot_version(monitoring_port: u16) -> anyhow::Result<u64> {
    let snapshot: Value = monitoring_get(monitoring_port, "/debug/snapshot")
        .await?
        .json()?;
    snapshot["version"]
        .as_u64()
        .with_context(|| format!("/debug/snapshot has no version: {snapshot}"))
}

/// One check of everything [`Acked`] stands for; fails saying what is not there yet.
async fn check_acked(
    envoy: &Envoy,
    mode: AdsMode,
    monitoring_port: u16,
    node: &str,
) -> anyhow::Result<Acked> {
    monitoring_get(monitoring_port, "/readyz").await?;
    let version = snapshot_version(monitoring_port).await?;

    // capstan's side: this proxy acknowledged every type it was sent.
    let syncz: Value = monitoring_get(monitoring_port, "/debug/syncz")
        .await?
        .json()?;
    let entry = syncz
        .as_array()
        .and_then(|all| all.iter().find(|e| e["node"] == node))
        .with_context(|| format!("proxy {node} not connected to capstan yet"))?;
    ensure!(
        entry["snapshot_version"].as_u64() == Some(version),
        "syncz was taken at snapshot {} while the cache moved to {version}",
        entry["snapshot_version"]
    );
    let mut types = Vec::new();
    for t in XDS_TYPES {
        let ty = &entry["types"][t];
        let status = ty["status"].as_str().unwrap_or("NOT SENT").to_string();
        // EDS and RDS are only sent for what CDS and LDS name; an empty mesh names none
        // (Envoy's warming counts below show that nothing it asked for is missing).
        let optional = matches!(t, "eds" | "rds") && status == "NOT SENT";
        ensure!(
            status == "SYNCED" || optional,
            "{t} is {status} for {node}: {ty}"
        );
        ensure!(
            optional || (ty["sent"] == ty["acked"] && ty["acked"].is_u64()),
            "{t} not acknowledged at the version sent: {ty}"
        );
        types.push((t.to_string(), status, ty["acked"].as_u64()));
    }

    // Envoy's side: it applied the updates and rejected none.
    envoy.ensure_no_rejected_updates().await?;
    let stats = envoy
        .stats("update_success$|warming|^control_plane.connected_state$")
        .await?;
    let stat = |name: &str| stats.get(name).copied();
    for name in [
        "cluster_manager.cds.update_success",
        "listener_manager.lds.update_success",
    ] {
        ensure!(
            stat(name).is_some_and(|n| n >= 1),
            "{name} is {:?}",
            stat(name)
        );
    }
    ensure!(
        stat("cluster_manager.warming_clusters") == Some(0),
        "clusters warming: {:?}",
        stat("cluster_manager.warming_clusters")
    );
    ensure!(
        stat("listener_manager.total_listeners_warming") == Some(0),
        "listeners warming: {:?}",
        stat("listener_manager.total_listeners_warming")
    );
    let updates: BTreeMap<String, u64> = stats
        .iter()
        .filter(|(k, _)| {
            k.ends_with("update_success")
                && (k.starts_with("cluster_manager.cds")
                    || k.starts_with("listener_manager.lds")
                    || k.contains(".rds."))
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    if let Some((name, _)) = updates
        .iter()
        .find(|(k, v)| k.contains(".rds.") && **v == 0)
    {
        anyhow::bail!("{name} is 0: a route configuration has not arrived");
    }

    // Over SotW, Envoy reports the version of the last CDS and LDS responses it accepted:
    // they must be the ones capstan says were acknowledged.
    if mode == AdsMode::Sotw {
        let dump = envoy.config_dump(false).await?;
        for (t, kind) in [
            ("cds", "ClustersConfigDump"),
            ("lds", "ListenersConfigDump"),
        ] {
            let acked = types
                .iter()
                .find(|(name, _, _)| name == t)
                .and_then(|(_, _, v)| *v);
            // capstan's SotW version_info is `<snapshot version>-<hash of the content>`.
            let held = dump_section(&dump, kind).and_then(|s| s["version_info"].as_str());
            let held_version = held
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            ensure!(
                held_version.is_some() && held_version == acked,
                "Envoy holds {t} version {held:?}, capstan saw {acked:?} acknowledged"
            );
        }
    }

    // Nothing moved while we looked.
    let after = snapshot_version(monitoring_port).await?;
    ensure!(after == version, "snapshot moved from {version} to {after}");
    Ok(Acked {
        snapshot_version: version,
        types,
        updates,
    })
}

async fn wait_acked(demo: &mut Demo, bootstrap: &Bootstrap, args: &Args) -> anyhow::Result<Acked> {
    step("waiting for Envoy to acknowledge capstan's config ...");
    let node = bootstrap.node_id();
    let Demo { envoy, capstan, .. } = demo;
    wait_until(
        "Envoy to acknowledge capstan's config",
        Duration::from_secs(args.ready_timeout_secs),
        async || {
            capstan.ensure_running()?;
            envoy.process().ensure_running()?;
            check_acked(envoy, bootstrap.mode, args.monitoring_port, &node).await
        },
    )
    .await
}

fn print_acked(acked: &Acked) {
    let types: Vec<String> = acked
        .types
        .iter()
        .map(|(t, status, v)| match v {
            Some(v) => format!("{t} {status} at {v}"),
            None => format!("{t} {status}"),
        })
        .collect();
    let updates: Vec<String> = acked
        .updates
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    step(&format!(
        "ready: Envoy acknowledged capstan's config at snapshot version {} ({}); \
         0 updates rejected, no cluster or listener warming; Envoy's {}",
        acked.snapshot_version,
        types.join(", "),
        updates.join(" ")
    ));
}

// ---------------------------------------------------------------------------------------
// What Envoy holds, from /config_dump.

/// The `configs` entry whose `@type` ends with `kind` (e.g. `ClustersConfigDump`).
fn dump_section<'a>(dump: &'a Value, kind: &str) -> Option<&'a Value> {
    dump["configs"].as_array()?.iter().find(|c| {
        c["@type"]
            .as_str()
            .and_then(|t| t.rsplit('.').next())
            .is_some_and(|t| t == kind)
    })
}

fn array(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn socket_address(v: &Value) -> Option<SocketAddr> {
    let sa = &v["socket_address"];
    let ip: IpAddr = sa["address"].as_str()?.parse().ok()?;
    let port = u16::try_from(sa["port_value"].as_u64()?).ok()?;
    Some(SocketAddr::new(ip, port))
}

#[derive(Debug)]
struct ListenerView {
    name: String,
    address: Option<SocketAddr>,
    /// Route configurations its HTTP connection managers take from RDS.
    route_configs: Vec<String>,
}

#[derive(Debug)]
struct ClusterView {
    name: String,
    kind: String,
    endpoints: Vec<SocketAddr>,
}

#[derive(Debug)]
struct RouteConfigView {
    name: String,
    virtual_hosts: Vec<VirtualHostView>,
}

#[derive(Debug)]
struct VirtualHostView {
    name: String,
    domains: Vec<String>,
    routes: Vec<RouteView>,
}

#[derive(Debug)]
struct RouteView {
    name: String,
    matcher: String,
    action: String,
    weighted: bool,
    /// A request this route matches, or why none could be made up.
    request: Result<SampleRequest, String>,
}

#[derive(Debug, Clone)]
struct SampleRequest {
    path: String,
    headers: Vec<(String, String)>,
}

#[derive(Debug)]
struct Observed {
    listeners: Vec<ListenerView>,
    clusters: Vec<ClusterView>,
    route_configs: Vec<RouteConfigView>,
}

fn observe(dump: &Value) -> Observed {
    let mut listeners = Vec::new();
    if let Some(section) = dump_section(dump, "ListenersConfigDump") {
        for l in array(&section["dynamic_listeners"]) {
            let listener = &l["active_state"]["listener"];
            let mut route_configs = Vec::new();
            collect_rds_names(listener, &mut route_configs);
            listeners.push(ListenerView {
                name: l["name"].as_str().unwrap_or("?").to_string(),
                address: socket_address(&listener["address"]),
                route_configs,
            });
        }
    }

    let mut eds: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    if let Some(section) = dump_section(dump, "EndpointsConfigDump") {
        for e in array(&section["dynamic_endpoint_configs"]) {
            let config = &e["endpoint_config"];
            if let Some(name) = config["cluster_name"].as_str() {
                eds.insert(name.to_string(), load_assignment_addrs(config));
            }
        }
    }
    let mut clusters = Vec::new();
    if let Some(section) = dump_section(dump, "ClustersConfigDump") {
        for c in array(&section["dynamic_active_clusters"]) {
            let cluster = &c["cluster"];
            let name = cluster["name"].as_str().unwrap_or("?").to_string();
            let kind = cluster["type"].as_str().unwrap_or("EDS").to_string();
            let mut endpoints = load_assignment_addrs(&cluster["load_assignment"]);
            if let Some(from_eds) = eds.get(&name) {
                endpoints.extend(from_eds);
            }
            clusters.push(ClusterView {
                name,
                kind,
                endpoints,
            });
        }
    }

    let mut route_configs = Vec::new();
    if let Some(section) = dump_section(dump, "RoutesConfigDump") {
        for r in array(&section["dynamic_route_configs"]) {
            let config = &r["route_config"];
            let virtual_hosts = array(&config["virtual_hosts"])
                .map(|vh| VirtualHostView {
                    name: vh["name"].as_str().unwrap_or("?").to_string(),
                    domains: array(&vh["domains"])
                        .filter_map(|d| d.as_str().map(str::to_string))
                        .collect(),
                    routes: array(&vh["routes"]).map(route_view).collect(),
                })
                .collect();
            route_configs.push(RouteConfigView {
                name: config["name"].as_str().unwrap_or("?").to_string(),
                virtual_hosts,
            });
        }
    }
    Observed {
        listeners,
        clusters,
        route_configs,
    }
}

fn collect_rds_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "rds"
                    && let Some(name) = child["route_config_name"].as_str()
                {
                    out.push(name.to_string());
                } else {
                    collect_rds_names(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_rds_names(i, out)),
        _ => {}
    }
}

fn load_assignment_addrs(assignment: &Value) -> Vec<SocketAddr> {
    array(&assignment["endpoints"])
        .flat_map(|locality| array(&locality["lb_endpoints"]))
        .filter_map(|lb| socket_address(&lb["endpoint"]["address"]))
        .collect()
}

/// A string matcher (`{"exact": "x"}`, `{"prefix": ...}`, ...) as text, and a value it matches.
fn string_matcher(m: &Value) -> (String, Option<String>) {
    for op in ["exact", "prefix", "suffix", "contains"] {
        if let Some(v) = m[op].as_str() {
            return (format!("{op} {v:?}"), Some(v.to_string()));
        }
    }
    if let Some(re) = m["safe_regex"]["regex"].as_str() {
        return (format!("regex {re:?}"), None);
    }
    (m.to_string(), None)
}

/// Describes a route's match and action, and makes up a request the match selects.
fn route_view(route: &Value) -> RouteView {
    let m = &route["match"];
    let mut conditions = Vec::new();
    let mut unmatchable = Vec::new();
    let mut path = "/".to_string();
    if let Some(p) = m["prefix"].as_str() {
        conditions.push(format!("prefix {p}"));
        path = if p.is_empty() { "/".into() } else { p.into() };
    } else if let Some(p) = m["path"].as_str() {
        conditions.push(format!("path {p}"));
        path = p.into();
    } else if let Some(p) = m["path_separated_prefix"].as_str() {
        conditions.push(format!("path prefix {p}"));
        path = p.into();
    } else if let Some(re) = m["safe_regex"]["regex"].as_str() {
        conditions.push(format!("path regex {re:?}"));
        unmatchable.push(format!("path regex {re:?}"));
    }
    let mut headers = Vec::new();
    for h in array(&m["headers"]) {
        let name = h["name"].as_str().unwrap_or("?").to_string();
        let invert = h["invert_match"].as_bool() == Some(true);
        let (text, value) = if h["present_match"].as_bool() == Some(true) {
            ("present".to_string(), Some("1".to_string()))
        } else if let Some(v) = h["exact_match"].as_str() {
            (format!("exact {v:?}"), Some(v.to_string()))
        } else {
            string_matcher(&h["string_match"])
        };
        let text = if invert { format!("not {text}") } else { text };
        conditions.push(format!("header {name} {text}"));
        match value {
            Some(v) if !invert && name == ":method" && v == "GET" => {}
            Some(v) if !invert && !name.starts_with(':') => headers.push((name, v)),
            _ => unmatchable.push(format!("header {name} {text}")),
        }
    }
    let mut query = Vec::new();
    for q in array(&m["query_parameters"]) {
        let name = q["name"].as_str().unwrap_or("?").to_string();
        let (text, value) = if q["present_match"].as_bool() == Some(true) {
            ("present".to_string(), Some(String::new()))
        } else {
            string_matcher(&q["string_match"])
        };
        conditions.push(format!("query {name} {text}"));
        match value {
            Some(v) if v.is_empty() => query.push(name),
            Some(v) => query.push(format!("{name}={v}")),
            None => unmatchable.push(format!("query {name} {text}")),
        }
    }
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }

    let (action, weighted) = route_action(route);
    let request = if unmatchable.is_empty() {
        Ok(SampleRequest { path, headers })
    } else {
        Err(format!(
            "no sample: cannot make up a request matching {}",
            unmatchable.join(", ")
        ))
    };
    RouteView {
        name: route["name"].as_str().unwrap_or("").to_string(),
        matcher: conditions.join(" and "),
        action,
        weighted,
        request,
    }
}

fn route_action(route: &Value) -> (String, bool) {
    let mut extras = Vec::new();
    let (mut action, mut weighted) = (String::new(), false);
    let r = &route["route"];
    if let Some(c) = r["cluster"].as_str() {
        action = c.to_string();
    } else if r["weighted_clusters"].is_object() {
        weighted = true;
        let clusters = &r["weighted_clusters"]["clusters"];
        let total: u64 = array(clusters).filter_map(|c| c["weight"].as_u64()).sum();
        action = array(clusters)
            .map(|c| {
                let w = c["weight"].as_u64().unwrap_or(0);
                let name = c["name"].as_str().unwrap_or("?");
                if total == 100 {
                    format!("{w}% {name}")
                } else {
                    format!("{w}/{total} {name}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
    } else if route["direct_response"].is_object() {
        action = format!(
            "direct response {}",
            route["direct_response"]["status"].as_u64().unwrap_or(0)
        );
    } else if route["redirect"].is_object() {
        action = format!("redirect {}", route["redirect"]);
    } else if let Some(h) = r["cluster_header"].as_str() {
        action = format!("cluster named by header {h}");
    }
    if r.is_object() {
        for key in [
            "timeout",
            "prefix_rewrite",
            "host_rewrite_literal",
            "regex_rewrite",
        ] {
            if !r[key].is_null() {
                extras.push(format!("{key} {}", compact(&r[key])));
            }
        }
        if !r["retry_policy"].is_null() {
            extras.push("retry_policy".to_string());
        }
    }
    if let Some(filters) = route["typed_per_filter_config"].as_object() {
        for (name, config) in filters {
            extras.push(format!("{name} {}", compact(config)));
        }
    }
    if action.is_empty() {
        action = compact(route);
    }
    if !extras.is_empty() {
        action = format!("{action} [{}]", extras.join("; "));
    }
    (action, weighted)
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The Host header to send to a virtual host: its shortest domain without a port, with a
/// wildcard filled in.
fn sample_host(domains: &[String]) -> Option<String> {
    let pick = domains
        .iter()
        .filter(|d| !d.contains(':'))
        .min_by_key(|d| d.len())
        .or_else(|| domains.first())?;
    Some(pick.replacen('*', "demo", 1))
}

/// The loopback endpoint addresses Envoy holds, each with the services (cluster host's short
/// name) and subsets of the clusters it is in. Other addresses are returned apart.
struct Workloads {
    loopback: BTreeMap<SocketAddr, (BTreeSet<String>, BTreeSet<String>)>,
    elsewhere: BTreeSet<SocketAddr>,
}

fn workloads(clusters: &[ClusterView]) -> Workloads {
    let mut w = Workloads {
        loopback: BTreeMap::new(),
        elsewhere: BTreeSet::new(),
    };
    for c in clusters {
        // Istio's names: `outbound|PORT|SUBSET|HOST`.
        let parts: Vec<&str> = c.name.split('|').collect();
        let (subset, host) = match parts.as_slice() {
            [_, _, subset, host] => (*subset, *host),
            _ => ("", c.name.as_str()),
        };
        let service = host.split('.').next().unwrap_or(host).to_string();
        for addr in &c.endpoints {
            if !addr.ip().is_loopback() {
                w.elsewhere.insert(*addr);
                continue;
            }
            let entry = w.loopback.entry(*addr).or_default();
            entry.0.insert(service.clone());
            if !subset.is_empty() {
                entry.1.insert(subset.to_string());
            }
        }
    }
    w
}

/// Starts a capstan-upstream instance on each free loopback endpoint address. Prints what it
/// started and what it could not.
async fn start_upstreams(observed: &Observed, log_dir: &Path) -> anyhow::Result<Option<Upstreams>> {
    let w = workloads(&observed.clusters);
    let mut instances: Vec<(String, String, SocketAddr)> = Vec::new();
    let mut seen = BTreeSet::new();
    for (addr, (services, subsets)) in &w.loopback {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            step(&format!(
                "not starting an upstream on {addr}: {e} (requests to it reach whatever listens there)"
            ));
            continue;
        }
        let service = services.iter().next().cloned().unwrap_or_default();
        let mut version = if subsets.is_empty() {
            "any".to_string()
        } else {
            subsets.iter().cloned().collect::<Vec<_>>().join("+")
        };
        // Upstreams are told apart by (service, version).
        let base = version.clone();
        let mut n = 1;
        while !seen.insert((service.clone(), version.clone())) {
            n += 1;
            version = format!("{base}#{n}");
        }
        instances.push((service, version, *addr));
    }
    for addr in &w.elsewhere {
        step(&format!(
            "not starting an upstream for endpoint {addr}: not a loopback address"
        ));
    }
    if instances.is_empty() {
        step("no loopback endpoints to serve: no upstreams started");
        return Ok(None);
    }
    let shown: Vec<String> = instances
        .iter()
        .map(|(s, v, a)| format!("{s} {v} on {a}"))
        .collect();
    step(&format!(
        "starting capstan-upstream for the endpoints Envoy holds: {}",
        shown.join(", ")
    ));
    let refs: Vec<(&str, &str, SocketAddr)> = instances
        .iter()
        .map(|(s, v, a)| (s.as_str(), v.as_str(), *a))
        .collect();
    let bin = locate::upstream_bin()?;
    let upstreams = Upstreams::start(&bin, &refs, log_dir, "upstreams").await?;
    Ok(Some(upstreams))
}

/// What answered one request, as printed.
fn outcome(resp: &anyhow::Result<HttpResponse>, upstreams: Option<&Upstreams>) -> String {
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            let text = format!("{e:#}");
            return format!("error: {}", text.lines().next().unwrap_or(""));
        }
    };
    if let Ok(reply) = resp.json::<UpstreamReply>() {
        let addr = upstreams
            .and_then(|u| u.addr(&reply.service, &reply.version).ok())
            .map(|a| format!(" ({a})"))
            .unwrap_or_default();
        return format!(
            "{} from {} {}{addr}",
            resp.status.as_u16(),
            reply.service,
            reply.version
        );
    }
    let mut text = format!("{} from Envoy", resp.status.as_u16());
    if let Some(location) = resp
        .headers
        .get(hyper::header::LOCATION)
        .and_then(|l| l.to_str().ok())
    {
        text.push_str(&format!(", location {location}"));
    }
    let body = resp.text();
    let body = body.trim();
    if !body.is_empty() {
        let cut: String = body.chars().take(60).collect();
        text.push_str(&format!(": {cut:?}"));
    }
    text
}

fn curl(host: &str, req: &SampleRequest, listener: SocketAddr) -> String {
    let mut cmd = format!("curl -s -H 'Host: {host}'");
    for (k, v) in &req.headers {
        cmd.push_str(&format!(" -H '{k}: {v}'"));
    }
    cmd.push_str(&format!(" 'http://{listener}{}'", req.path));
    cmd
}

/// Prints what Envoy holds and, per route, what answers requests it matches.
async fn report(observed: &Observed, upstreams: Option<&Upstreams>, outbound_port: u16) {
    println!("\nWhat Envoy holds (its /config_dump), as acknowledged from capstan:");
    println!("listeners ({}):", observed.listeners.len());
    for l in &observed.listeners {
        let addr = l.address.map_or_else(|| "?".to_string(), |a| a.to_string());
        println!(
            "  listener {} on {addr}, routes from RDS {:?}",
            l.name, l.route_configs
        );
    }
    println!("clusters ({}):", observed.clusters.len());
    for c in observed.clusters.iter().take(MAX_LISTED_CLUSTERS) {
        let eps: Vec<String> = c.endpoints.iter().map(SocketAddr::to_string).collect();
        println!(
            "  cluster {} ({}) endpoints [{}]",
            c.name,
            c.kind,
            eps.join(", ")
        );
    }
    if observed.clusters.len() > MAX_LISTED_CLUSTERS {
        println!(
            "  ... and {} more clusters",
            observed.clusters.len() - MAX_LISTED_CLUSTERS
        );
    }

    let mut sampled = 0;
    for rc in &observed.route_configs {
        // Requests go to the listener that takes this route configuration.
        let listener = observed
            .listeners
            .iter()
            .find(|l| l.route_configs.contains(&rc.name))
            .and_then(|l| l.address)
            .map(|a| {
                if a.ip().is_unspecified() {
                    loopback(a.port())
                } else {
                    a
                }
            })
            .unwrap_or_else(|| loopback(outbound_port));
        println!(
            "route configuration {} ({} virtual hosts), served on {listener}:",
            rc.name,
            rc.virtual_hosts.len()
        );
        let mut client = HttpClient::new(listener);
        for vh in &rc.virtual_hosts {
            println!("  virtual host {}", vh.name);
            println!("    domains: {}", vh.domains.join(", "));
            let host = sample_host(&vh.domains);
            let sample = sampled < MAX_SAMPLED_VIRTUAL_HOSTS;
            if sample {
                sampled += 1;
            }
            for r in &vh.routes {
                let name = if r.name.is_empty() {
                    String::new()
                } else {
                    format!(" {}", r.name)
                };
                let matcher = if r.matcher.is_empty() {
                    "any request".to_string()
                } else {
                    r.matcher.clone()
                };
                println!("    route{name}: {matcher} -> {}", r.action);
                let (Some(host), true) = (&host, sample) else {
                    continue;
                };
                let req = match &r.request {
                    Ok(req) => req,
                    Err(why) => {
                        println!("      ({why})");
                        continue;
                    }
                };
                let n = if r.weighted {
                    SAMPLES_PER_WEIGHTED_ROUTE
                } else {
                    SAMPLES_PER_ROUTE
                };
                let headers: Vec<(&str, &str)> = req
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let mut tally: BTreeMap<String, usize> = BTreeMap::new();
                for _ in 0..n {
                    let resp = client.get(host, &req.path, &headers).await;
                    *tally.entry(outcome(&resp, upstreams)).or_default() += 1;
                }
                let answers: Vec<String> = tally
                    .iter()
                    .map(|(what, count)| format!("{count} × {what}"))
                    .collect();
                println!("      $ {}", curl(host, req, listener));
                println!("        {n} requests: {}", answers.join(", "));
            }
        }
    }
    if sampled == MAX_SAMPLED_VIRTUAL_HOSTS {
        println!(
            "(requests were sent to the first {MAX_SAMPLED_VIRTUAL_HOSTS} virtual hosts only)"
        );
    }
}

fn print_footer(args: &Args, log_dir: &Path) {
    let admin = format!("http://127.0.0.1:{}", args.admin_port);
    let monitoring = format!("http://127.0.0.1:{}", args.monitoring_port);
    println!(
        "
capstan demo is running: Envoy's outbound listener is http://127.0.0.1:{port}, routed by
capstan from {config}.

  # what Envoy holds, and what capstan sent it and saw acknowledged
  curl -s {admin}/config_dump
  curl -s {monitoring}/debug/syncz
  curl -s {monitoring}/metrics | grep capstan_xds

Edit the YAML in {config} and rerun the curls above: capstan
pushes the change to the running Envoy.
Logs: {logs}/{{capstan,envoy,upstreams}}.log
Press Ctrl-C to stop.",
        port = args.outbound_port,
        config = args.config_dir.display(),
        logs = log_dir.display(),
    );
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn run(args: &Args, log_dir: &Path) -> anyhow::Result<Demo> {
    let (mut demo, bootstrap) = start(args, log_dir).await.context("demo failed to start")?;
    let acked = wait_acked(&mut demo, &bootstrap, args).await?;
    print_acked(&acked);
    let dump = demo.envoy.config_dump(true).await?;
    let observed = observe(&dump);
    demo.upstreams = start_upstreams(&observed, log_dir).await?;
    report(&observed, demo.upstreams.as_ref(), args.outbound_port).await;
    print_footer(args, log_dir);
    Ok(demo)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let log_dir = match &args.log_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => locate::fresh_log_dir("demo")?,
    };
    let mut demo = run(&args, &log_dir)
        .await
        .with_context(|| format!("logs in {}", log_dir.display()))?;

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if let Err(e) = demo.check_alive() {
                    break Err(e.context("a demo process died"));
                }
            }
        }
    };
    step("stopping Envoy, capstan and upstreams ...");
    drop(demo);
    step("stopped");
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn routes_are_described_with_a_request_they_match() {
        let route = json!({
            "name": "jason-to-v2",
            "match": {"prefix": "/", "headers": [
                {"name": "end-user", "string_match": {"exact": "jason"}}
            ], "query_parameters": [{"name": "debug", "present_match": true}]},
            "route": {"cluster": "outbound|9080|v2|reviews.bookinfo.svc.cluster.local",
                      "timeout": "0s"}
        });
        let view = route_view(&route);
        assert_eq!(
            view.matcher,
            "prefix / and header end-user exact \"jason\" and query debug present"
        );
        assert!(
            view.action.starts_with("outbound|9080|v2|reviews"),
            "{}",
            view.action
        );
        assert!(view.action.contains("timeout 0s"), "{}", view.action);
        let req = view.request.expect("a request");
        assert_eq!(req.path, "/?debug");
        assert_eq!(req.headers, [("end-user".to_string(), "jason".to_string())]);
        assert!(!view.weighted);

        let weighted = route_view(&json!({
            "match": {"safe_regex": {"regex": "/a.*"}},
            "route": {"weighted_clusters": {"clusters": [
                {"name": "a", "weight": 80}, {"name": "b", "weight": 20}]}}
        }));
        assert_eq!(weighted.action, "80% a, 20% b");
        assert!(weighted.weighted);
        assert!(weighted.request.is_err());
    }

    #[test]
    fn sample_host_prefers_the_short_name() {
        let domains: Vec<String> = [
            "reviews.bookinfo.svc.cluster.local:9080",
            "reviews",
            "reviews.bookinfo",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(sample_host(&domains).as_deref(), Some("reviews"));
        assert_eq!(sample_host(&["*".to_string()]).as_deref(), Some("demo"));
    }

    #[test]
    fn workloads_are_named_by_service_and_subset() {
        let addr: SocketAddr = "127.0.0.1:19082".parse().unwrap();
        let far: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let clusters = vec![
            ClusterView {
                name: "outbound|9080||reviews.bookinfo.svc.cluster.local".into(),
                kind: "EDS".into(),
                endpoints: vec![addr, far],
            },
            ClusterView {
                name: "outbound|9080|v2|reviews.bookinfo.svc.cluster.local".into(),
                kind: "EDS".into(),
                endpoints: vec![addr],
            },
        ];
        let w = workloads(&clusters);
        let (services, subsets) = &w.loopback[&addr];
        assert_eq!(services.iter().collect::<Vec<_>>(), ["reviews"]);
        assert_eq!(subsets.iter().collect::<Vec<_>>(), ["v2"]);
        assert!(w.elsewhere.contains(&far));
    }
}
