//! `capstan explain`: why is a call from A to B allowed or denied? From Istio YAML files (as
//! `capstan validate -f` reads them), it prints, per workload of the destination, how the
//! caller's sidecar reaches it (mutual TLS or not, and why), what the workload's sidecar
//! accepts (PeerAuthentication), each RBAC filter on the way with the rule that matched
//! (AuthorizationPolicy, in Envoy's order), and the decision with the file and line of the
//! rule that made it. Exit status: 0 when every workload allows the call, 1 when any refuses
//! it, 2 on usage errors.

mod cluster;
mod decide;
mod rbac_eval;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use capstan_crds::{IstioObject, parse_documents};
use clap::Args;

use crate::index::{Index, IstioRecord, Record};
use crate::model::{Mesh, hostname};
pub use decide::{Call, Caller, Transport, Verdict};

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Istio YAML: a file or a directory (searched recursively); repeat for several.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR",
        required_unless_present = "kubeconfig",
        conflicts_with = "kubeconfig"
    )]
    pub files: Vec<String>,
    /// Read the cluster's objects instead (Istio's kinds, Services, EndpointSlices, Pods and
    /// Namespaces), as `capstan run --kubeconfig` does.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The caller, a workload with a sidecar: NAMESPACE/SERVICE_ACCOUNT.
    #[arg(
        long,
        value_name = "NAMESPACE/SA",
        required_unless_present = "from_outside"
    )]
    pub from: Option<String>,
    /// The caller has no sidecar (plain text, no identity); its namespace.
    #[arg(long, value_name = "NAMESPACE", conflicts_with = "from")]
    pub from_outside: Option<String>,
    /// The caller's address, as the workload's sidecar sees it (for `ipBlocks`).
    #[arg(long, value_name = "IP")]
    pub source_ip: Option<IpAddr>,
    /// The destination: a service host (short names resolve in the caller's namespace) and
    /// its port.
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,
    #[arg(long)]
    pub path: Option<String>,
    #[arg(long)]
    pub method: Option<String>,
    /// A request header, `name=value`; repeat for several.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// The caller presents a valid JWT of this issuer (`iss`)...
    #[arg(long, value_name = "ISSUER")]
    pub jwt_issuer: Option<String>,
    /// ...for this subject (`sub`).
    #[arg(long, value_name = "SUBJECT", requires = "jwt_issuer")]
    pub jwt_subject: Option<String>,
    /// What the external authorizer of a CUSTOM AuthorizationPolicy answers when a rule of
    /// the policy puts the call to it: capstan cannot ask it.
    #[arg(long, value_enum, default_value = "allow")]
    pub ext_authz: ExtAuthzAnswer,
    /// Istio's MeshConfig YAML, as `capstan run --mesh-config` (its `rootNamespace` wins over
    /// --root-namespace; CUSTOM policies name its extension providers).
    #[arg(long)]
    pub mesh_config: Option<std::path::PathBuf>,
    /// Istio's `meshConfig.rootNamespace`, as `capstan run --root-namespace`.
    #[arg(long, default_value = crate::model::sidecar_scope::DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExtAuthzAnswer {
    Allow,
    Deny,
}

/// Where an object was read: file and line of its document, and of each AuthorizationPolicy
/// rule.
#[derive(Default)]
struct Locations {
    rules: BTreeMap<String, String>,
}

pub fn run(args: &ExplainArgs) -> i32 {
    match explain(args) {
        Ok((text, allowed)) => {
            print!("{text}");
            if allowed { 0 } else { 1 }
        }
        Err(message) => {
            eprintln!("capstan explain: {message}");
            2
        }
    }
}

/// The explanation as printed, and whether every workload allows the call.
pub fn explain(args: &ExplainArgs) -> Result<(String, bool), String> {
    let (index, locations) = match &args.kubeconfig {
        Some(kubeconfig) => cluster::load(kubeconfig)?,
        None => load(&args.files)?,
    };
    let mut mesh = Mesh::new("cluster.local");
    let mut root_namespace = args.root_namespace.clone();
    if let Some(path) = &args.mesh_config {
        let config = crate::mesh_config::MeshConfig::read(path).map_err(|e| e.to_string())?;
        if let Some(root) = config.root_namespace.clone() {
            root_namespace = root;
        }
        mesh.settings = std::sync::Arc::new(config.settings());
    }
    mesh.sidecar_scopes.set_root_namespace(&root_namespace);
    mesh.update(&index, &crate::model::everything(&index));
    let caller = caller(args)?;
    let (host, port) = args
        .to
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u32>().ok()?)))
        .ok_or_else(|| format!("--to {}: expected HOST:PORT", args.to))?;
    let host = hostname::resolve(host, &caller.namespace, &mesh.domain_suffix);
    let service = mesh
        .services
        .get(&host)
        .ok_or_else(|| format!("no service has host {host}"))?;
    let service_port = service
        .ports
        .iter()
        .find(|p| p.number == port)
        .ok_or_else(|| format!("{host} has no port {port}"))?;
    let call = call(args)?;
    let verdicts = decide::explain(&mesh, &caller, service, service_port, &call);
    if verdicts.is_empty() {
        return Err(format!("{host} has no endpoints"));
    }
    let http = verdicts.iter().any(|v| v.http);
    let mut text = format!(
        "{} -> {host}:{port}{}\n",
        describe_caller(&caller),
        describe_call(&call, http)
    );
    for verdict in &verdicts {
        text.push_str(&describe(verdict, &locations));
    }
    Ok((text, verdicts.iter().all(|v| v.allowed)))
}

fn caller(args: &ExplainArgs) -> Result<Caller, String> {
    match (&args.from, &args.from_outside) {
        (Some(from), _) => {
            let (namespace, account) = from
                .split_once('/')
                .ok_or_else(|| format!("--from {from}: expected NAMESPACE/SERVICE_ACCOUNT"))?;
            Ok(Caller {
                namespace: namespace.into(),
                service_account: Some(account.into()),
                address: args.source_ip,
            })
        }
        (None, Some(namespace)) => Ok(Caller {
            namespace: namespace.clone(),
            service_account: None,
            address: args.source_ip,
        }),
        (None, None) => Err("--from or --from-outside is required".into()),
    }
}

fn call(args: &ExplainArgs) -> Result<Call, String> {
    let mut headers = BTreeMap::new();
    for header in &args.headers {
        let (name, value) = header
            .split_once('=')
            .ok_or_else(|| format!("--header {header}: expected NAME=VALUE"))?;
        headers.insert(name.to_ascii_lowercase(), value.to_string());
    }
    let mut jwt = BTreeMap::new();
    if let Some(issuer) = &args.jwt_issuer {
        jwt.insert("iss".to_string(), issuer.clone());
        jwt.insert(
            "sub".to_string(),
            args.jwt_subject.clone().unwrap_or_default(),
        );
    }
    Ok(Call {
        path: args.path.clone(),
        method: args.method.clone(),
        headers,
        jwt,
        ext_authz_allows: args.ext_authz == ExtAuthzAnswer::Allow,
    })
}

/// The valid Istio objects of `files` as an index, and where each policy rule is.
fn load(files: &[String]) -> Result<(Index, Locations), String> {
    let mut paths = Vec::new();
    for file in files {
        crate::validate_cmd::expand(Path::new(file), &mut paths)
            .map_err(|e| format!("{file}: {e}"))?;
    }
    let mut records = Vec::new();
    let mut locations = Locations::default();
    for path in paths {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))?;
        let Ok(documents) = parse_documents(&name, &text) else {
            continue;
        };
        for document in documents.into_iter().flatten() {
            if !document.validate().is_empty() {
                continue;
            }
            if let IstioObject::AuthorizationPolicy(ap) = &document.object {
                let key = document.object.key();
                for i in 0..ap.spec.rules.len().max(1) {
                    let line = document.line_of(&format!("spec.rules[{i}]"));
                    let at = line.map_or(name.clone(), |l| format!("{name}:{l}"));
                    locations
                        .rules
                        .insert(crate::translate::authorization::rule_name(&key, i), at);
                }
            }
            records.push(Record::Istio(IstioRecord::valid(document.object)));
        }
    }
    Ok((Index::of_istio(records), locations))
}

fn describe_caller(caller: &Caller) -> String {
    let who = match &caller.service_account {
        Some(sa) => format!("{}/{sa} (with a sidecar)", caller.namespace),
        None => format!("{} (no sidecar)", caller.namespace),
    };
    match caller.address {
        Some(ip) => format!("{who} from {ip}"),
        None => who,
    }
}

fn describe_call(call: &Call, http: bool) -> String {
    if !http {
        return " (TCP)".into();
    }
    let mut out = format!(
        " {} {}",
        call.method.as_deref().unwrap_or("GET"),
        call.path.as_deref().unwrap_or("/")
    );
    if let Some(issuer) = call.jwt.get("iss") {
        out.push_str(&format!(" with a JWT of {issuer}"));
    }
    out
}

fn describe(verdict: &Verdict, locations: &Locations) -> String {
    // CUSTOM rules carry a provider prefix, or a suffix when they deny: the file's rule is
    // the `ns[…]-policy[…]-rule[…]` within.
    let at = |name: &str| {
        let plain = name.find("ns[").map_or(name, |i| &name[i..]);
        let plain = plain.trim_end_matches("-deny-due-to-bad-CUSTOM-action");
        locations
            .rules
            .get(plain)
            .map_or(name.to_string(), |l| format!("{name} ({l})"))
    };
    let mut out = format!("workload {}:{}\n", verdict.address, verdict.port);
    out.push_str(&format!("  client sidecar: {}\n", verdict.client_tls));
    out.push_str(&format!(
        "  workload sidecar accepts: {}\n",
        verdict.server_mode
    ));
    let connection = match &verdict.transport {
        Transport::MutualTls { peer } => format!("mutual TLS, peer {peer}"),
        Transport::Plain => "plain text, no peer identity".into(),
        Transport::Refused(why) => format!("refused: {why}"),
    };
    out.push_str(&format!("  connection: {connection}\n"));
    if let Some((provider, matched)) = &verdict.custom {
        let what = match (provider, matched) {
            (_, None) => "no rule matches".to_string(),
            (Some(provider), Some(name)) => {
                format!(
                    "{} matches: the call is put to the external authorizer {provider:?}",
                    at(name)
                )
            }
            (None, Some(name)) => format!("{} matches", at(name)),
        };
        out.push_str(&format!("  CUSTOM filter: {what}\n"));
    }
    for (action, matched) in &verdict.filters {
        let what = matched
            .as_deref()
            .map_or("no rule matches".to_string(), |n| {
                format!("{} matches", at(n))
            });
        out.push_str(&format!("  {} filter: {what}\n", action.as_str_name()));
    }
    for (action, matched) in &verdict.dry_run {
        let what = matched
            .as_deref()
            .map_or("no rule matches".to_string(), |n| {
                format!("{} would match", at(n))
            });
        let action = action.as_str_name();
        out.push_str(&format!("  {action} dry run (not enforced): {what}\n"));
    }
    let decision = if verdict.allowed { "ALLOW" } else { "DENY" };
    out.push_str(&format!("  decision: {decision}: {}", verdict.because));
    if let Some(rule) = &verdict.rule {
        out.push_str(&format!(", {}", at(rule)));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests;
