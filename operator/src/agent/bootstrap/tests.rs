use std::path::PathBuf;
use std::process::Command;

use clap::Parser;

use super::*;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

fn args(extra: &[&str]) -> AgentArgs {
    args_with("istiod.istio-system.svc:15012", extra)
}

fn args_with(xds: &str, extra: &[&str]) -> AgentArgs {
    let mut argv = vec![
        "agent",
        "--namespace",
        "bookinfo",
        "--service-account",
        "reviews",
        "--pod-name",
        "reviews-v1-0",
        "--pod-ip",
        "10.0.0.7",
        "--xds-address",
        xds,
        "--label",
        "app=reviews",
        "--label",
        "version=v1",
    ];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).expect("flags").agent
}

#[test]
fn node_and_metadata_are_istio_shaped() {
    let b = bootstrap_json(&args(&[]), Path::new("/run/sds/socket")).expect("bootstrap");
    assert_eq!(
        b["node"]["id"],
        "sidecar~10.0.0.7~reviews-v1-0.bookinfo~bookinfo.svc.cluster.local"
    );
    let meta = &b["node"]["metadata"];
    assert_eq!(meta["NAMESPACE"], "bookinfo");
    assert_eq!(meta["SERVICE_ACCOUNT"], "reviews");
    assert_eq!(meta["LABELS"], json!({"app": "reviews", "version": "v1"}));
    let router = bootstrap_json(&args(&["--proxy-type", "router"]), Path::new("/s")).unwrap();
    assert!(
        router["node"]["id"]
            .as_str()
            .unwrap()
            .starts_with("router~")
    );
}

#[test]
fn xds_is_mutual_tls_with_both_secrets_from_the_socket() {
    let b = bootstrap_json(&args(&[]), Path::new("/run/sds/socket")).expect("bootstrap");
    let clusters = b["static_resources"]["clusters"].as_array().unwrap();
    let sds = clusters.iter().find(|c| c["name"] == SDS_CLUSTER).unwrap();
    assert_eq!(
        sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]["path"],
        "/run/sds/socket"
    );
    let xds = clusters.iter().find(|c| c["name"] == XDS_CLUSTER).unwrap();
    assert_eq!(xds["type"], "STRICT_DNS");
    let tls = &xds["transport_socket"]["typed_config"];
    assert_eq!(tls["sni"], "istiod.istio-system.svc");
    let common = &tls["common_tls_context"];
    assert_eq!(
        common["tls_certificate_sds_secret_configs"][0]["name"],
        "default"
    );
    assert_eq!(
        common["combined_validation_context"]["validation_context_sds_secret_config"]["name"],
        "ROOTCA"
    );
}

#[test]
fn bad_xds_addresses_are_refused() {
    for bad in ["nohost", "host:", ":15012", "host:99999", "host:0"] {
        assert!(
            bootstrap_json(&args_with(bad, &[]), Path::new("/s")).is_err(),
            "{bad}"
        );
    }
    let v6 = bootstrap_json(&args_with("[::1]:15012", &[]), Path::new("/s")).unwrap();
    assert_eq!(v6["static_resources"]["clusters"][1]["type"], "STATIC");
}

/// Envoy: `$ENVOY_BIN`, else what scripts/tools.sh recorded in the tools dir.
fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let tools = std::env::var_os("CAPSTAN_TOOLS_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools"),
            PathBuf::from,
        );
    let record = tools.join("envoy-path");
    let text = std::fs::read_to_string(&record).unwrap_or_else(|e| {
        panic!(
            "Envoy is needed to validate the bootstrap: set ENVOY_BIN or run `make tools` ({}: {e})",
            record.display()
        )
    });
    PathBuf::from(text.trim())
}

#[test]
fn envoy_accepts_the_bootstrap() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envoy.json");
    let b = bootstrap_json(
        &args_with("127.0.0.1:15012", &[]),
        &dir.path().join("socket"),
    )
    .unwrap();
    std::fs::write(&file, serde_json::to_vec_pretty(&b).unwrap()).unwrap();
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&file)
        .output()
        .expect("running envoy --mode validate");
    assert!(
        out.status.success(),
        "Envoy rejected the bootstrap:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn readiness_is_answered_on_the_health_port() {
    let bootstrap = bootstrap_json(&args(&[]), Path::new("/sds")).expect("a bootstrap");
    let listener = &bootstrap["static_resources"]["listeners"][0];
    assert_eq!(listener["address"]["socket_address"]["port_value"], 15021);
    let routes = &listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]
        [0]["routes"];
    assert_eq!(routes[0]["match"]["path"], "/healthz/ready");
    assert_eq!(routes[0]["direct_response"]["status"], 200);
    assert_eq!(routes[1]["direct_response"]["status"], 404);
    // Envoy waits for its first config however long it takes (else it would start the
    // listener, and pass the probe, on an empty config after 15 s).
    for source in ["cds_config", "lds_config"] {
        assert_eq!(
            bootstrap["dynamic_resources"][source]["initial_fetch_timeout"],
            "0s"
        );
    }
    let off =
        bootstrap_json(&args(&["--health-port", "0"]), Path::new("/sds")).expect("a bootstrap");
    assert!(off["static_resources"]["listeners"].is_null());
}
