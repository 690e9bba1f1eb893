//! `Sidecar` egress scoping and `exportTo` on a captured sidecar (`--sidecar-listeners
//! capture`, the `capture` harness: a real Envoy behind istio-init's iptables rules, in this
//! binary's own network namespace): what the sidecar does not see is not routed to a cluster
//! it lacks, but goes where its outbound traffic policy says, as with istiod. Logs:
//! `<target>/debug/e2e-logs/<test name>/`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, ensure};
use capstan_e2e::capture;
use capstan_e2e::capture_mesh::{SniApps, capstan_and_captured_sidecar};
use capstan_e2e::envoy::AdsMode;
use capstan_e2e::mesh::{CONFIG_TIMEOUT, TestEnv};
use capstan_e2e::netns::pod_ip;
use capstan_e2e::wait_until;

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

/// A ServiceEntry `name` of `namespace` for the HTTPS host `<name>.example.com` on 443, whose
/// one endpoint is `workload`'s `target`; `export_to`: its `exportTo` line, if any.
fn https_entry(
    name: &str,
    namespace: &str,
    workload: &str,
    target: u16,
    export_to: &str,
) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{name}.example.com]
  location: MESH_EXTERNAL
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: STATIC
{export_to}  endpoints: [{{address: {workload}, ports: {{https: {target}}}}}]
"
    )
}

/// The sidecar's namespace (bookinfo) scoped to its own services, the performance setting
/// Istio's docs recommend.
const OWN_NAMESPACE_ONLY: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  egress: [{hosts: [\"./*\"]}]
";

/// A TLS service of another namespace shares port 443 with the services the sidecar sees; a
/// connection by SNI to its name reaches its endpoint while the sidecar sees it, and passes
/// through to where it was headed (`ALLOW_ANY`) once a `Sidecar` scopes it out or its
/// `exportTo` keeps it in its namespace — not a reset for want of its cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_service_the_sidecar_does_not_see_is_passed_through() -> anyhow::Result<()> {
    capture::install()?;
    let env = TestEnv::new("a_tls_service_the_sidecar_does_not_see_is_passed_through")?;
    let workload = pod_ip(271);
    let apps = SniApps::start(
        &env,
        Path::new(UPSTREAM_BIN),
        &["partner.example.com", "own.example.com"],
        &[
            ("partner", SocketAddr::from((workload, 8443))),
            ("own", SocketAddr::from((workload, 9443))),
            (
                "outside-tls",
                SocketAddr::from((capture::EXTERNAL_SERVER, 443)),
            ),
        ],
    )
    .await?;
    let address = workload.to_string();
    // bookinfo's own TLS service on 443, seen by its sidecar whatever the scope.
    env.write_config(
        "own.yaml",
        &https_entry("own", "bookinfo", &address, 9443, ""),
    )?;
    let partner = |export_to| https_entry("partner", "partners", &address, 8443, export_to);
    env.write_config("partner.yaml", &partner(""))?;
    let (_capstan, envoy) = capstan_and_captured_sidecar(&env, AdsMode::Sotw, &address).await?;
    let log_dir = env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());
    let reached = async |name: &str| apps.reached(name).await;
    let reaches = async |name: &str, wanted: &str, what: &str| -> anyhow::Result<()> {
        wait_until(what, CONFIG_TIMEOUT, async || {
            let service = reached(name).await?;
            ensure!(service == wanted, "{name} reached {service}");
            Ok(())
        })
        .await
        .with_context(logs)
    };

    reaches("partner.example.com", "partner", "the partner's chain").await?;
    reaches("own.example.com", "own", "bookinfo's own chain").await?;

    env.write_config("sidecar.yaml", OWN_NAMESPACE_ONLY)?;
    reaches(
        "partner.example.com",
        "outside-tls",
        "the scoped-out name passed through",
    )
    .await?;
    let service = reached("own.example.com").await?;
    ensure!(
        service == "own",
        "scoped: own.example.com reached {service}"
    );

    std::fs::remove_file(env.config_dir.join("sidecar.yaml"))?;
    reaches(
        "partner.example.com",
        "partner",
        "the partner's chain again",
    )
    .await?;

    env.write_config("partner.yaml", &partner("  exportTo: [\".\"]\n"))?;
    reaches(
        "partner.example.com",
        "outside-tls",
        "the name kept in its namespace passed through",
    )
    .await?;
    envoy.ensure_no_rejected_updates().await
}
