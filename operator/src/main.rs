//! `capstan`: the control plane binary (the command line; everything else is in the library).

use std::io::IsTerminal;

use capstan::{RunArgs, agent, capture_rules, explain, proxy_status, run, validate_cmd, webhook};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "capstan",
    version,
    about = "An istiod-style service-mesh control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Istio configuration (a folder of YAML, or a Kubernetes cluster) to Envoy proxies
    /// over ADS.
    Run(RunArgs),
    /// Check Istio YAML files (like `istioctl validate`); exit status 1 if any is invalid.
    Validate(validate_cmd::ValidateArgs),
    /// Why a call from A to B is allowed or denied: mutual TLS on each side, the
    /// authorization rules in Envoy's order, the decision and the rule (file:line) behind it.
    Explain(explain::ExplainArgs),
    /// Serve the admission webhooks (HTTPS): POST /validate for Istio objects, POST /inject
    /// for sidecar injection.
    Webhook(webhook::WebhookArgs),
    /// Install a sidecar pod's traffic capture (istio-init's iptables rules), or print it
    /// with --dry-run.
    Iptables(capture_rules::IptablesArgs),
    /// Show where every connected proxy stands, per xDS type (like `istioctl proxy-status`).
    ProxyStatus(proxy_status::ProxyStatusArgs),
    /// Run beside a workload's Envoy (Istio's pilot-agent): get its certificate from the CA,
    /// serve it over SDS, renew it, write (and optionally run) Envoy's bootstrap.
    Agent(agent::AgentArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("CAPSTAN_LOG")
                .or_else(|_| EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    if let Command::Validate(args) = &cli.command {
        std::process::exit(validate_cmd::run(args));
    }
    if let Command::Explain(args) = &cli.command {
        std::process::exit(explain::run(args));
    }
    if let Command::Iptables(args) = &cli.command {
        return capture_rules::run(args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run(args) => runtime.block_on(run::run(args)),
        Command::Webhook(args) => runtime.block_on(webhook::run(args)),
        Command::ProxyStatus(args) => runtime.block_on(proxy_status::run(args)),
        Command::Agent(args) => runtime.block_on(agent::run(args)),
        Command::Validate(_) | Command::Explain(_) | Command::Iptables(_) => Ok(()),
    }
}
