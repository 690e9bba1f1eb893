//! `capstan validate`: checks Istio configuration files the way the admission webhook
//! and the folder source would, like `istioctl validate`.
//!
//! Every problem is one line, `FILE:LINE: document N (Kind ns/name): FIELD: MESSAGE`,
//! followed by a summary. Valid config that capstan does not act on yet (a kind it does not
//! translate, a field it does not apply) is reported on standard error as `warning: ...`
//! lines in the same form; warnings do not make a document invalid. Documents that are not Istio configuration (a Deployment in
//! the same file, say) are skipped. A Gateway's `credentialName` is checked against the
//! Secrets (`v1`, TLS-shaped) among all the files given: one that is missing or cannot be
//! used is a warning. Exit status: 0 when everything is valid, 1 when anything is not, 2 on
//! usage errors (a file that cannot be read).

mod credentials;
mod egress_protocols;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use capstan_crds::{DocumentError, DocumentErrorReason, IstioObject, parse_documents};

use crate::model::unsupported;
use crate::source::secret::is_secret_document;
use clap::{Args, ValueEnum};
use serde::Serialize;

/// Exit status when every document is valid.
pub const EXIT_VALID: i32 = 0;
/// Exit status when any document (or file) is invalid.
pub const EXIT_INVALID: i32 = 1;
/// Exit status on usage errors.
pub const EXIT_USAGE: i32 = 2;

/// Name shown for standard input.
const STDIN_NAME: &str = "<stdin>";

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// A file, a directory (searched recursively for *.yaml, *.yml and *.json) or `-`
    /// for standard input. Repeat to check several.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        required = true
    )]
    pub files: Vec<String>,
    /// Istio's MeshConfig YAML `capstan run --mesh-config` reads: the extension providers
    /// `CUSTOM` AuthorizationPolicies name are looked up in it.
    #[arg(long)]
    pub mesh_config: Option<PathBuf>,
    /// Output format: one line per problem, or a JSON array of problems.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// One problem, as printed (and as the JSON output's array elements).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: String,
    /// 1-based document number; `None` when the whole file is unreadable.
    pub document: Option<usize>,
    pub line: Option<u64>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(":")?;
        if let Some(document) = self.document {
            write!(f, " document {document}")?;
            match (&self.kind, &self.namespace, &self.name) {
                (Some(kind), Some(ns), Some(name)) => write!(f, " ({kind} {ns}/{name})")?,
                (Some(kind), None, Some(name)) => write!(f, " ({kind} {name})")?,
                (Some(kind), _, None) => write!(f, " ({kind})")?,
                (None, _, Some(name)) => write!(f, " ({name})")?,
                (None, _, None) => {}
            }
            f.write_str(":")?;
        }
        if let Some(field) = &self.field {
            write!(f, " {field}:")?;
        }
        write!(f, " {}", self.message)
    }
}

/// What checking some files found.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<Problem>,
    /// Valid config that capstan does not honour yet.
    pub warnings: Vec<Problem>,
    pub files: usize,
    /// Istio documents checked (valid or not).
    pub documents: usize,
    /// Documents with at least one problem.
    pub invalid_documents: usize,
    /// Documents that are not Istio configuration.
    pub skipped: usize,
    /// Secrets read and Gateways naming them, checked by [`Report::finish`].
    credentials: credentials::Credentials,
    /// Sidecars declaring egress port protocols and the services they may name, checked by
    /// [`Report::finish`].
    egress_protocols: egress_protocols::EgressProtocols,
    /// The extension providers of `--mesh-config` (none given: `None`).
    pub extension_providers: Option<crate::mesh_config::ExtensionProviders>,
}

impl Report {
    /// Checks one file's text and adds what it finds.
    pub fn check_text(&mut self, file: &str, text: &str) {
        self.files += 1;
        let documents = match parse_documents(file, text) {
            Ok(documents) => documents,
            Err(err) => {
                self.problems.push(Problem {
                    file: file.to_owned(),
                    document: None,
                    line: err.line,
                    kind: None,
                    namespace: None,
                    name: None,
                    field: None,
                    message: format!("invalid YAML: {}", err.message),
                });
                return;
            }
        };
        let mut secrets = Vec::new();
        for document in documents {
            match document {
                Err(err) if is_secret_document(err.api_version.as_deref(), err.kind.as_deref()) => {
                    self.skipped += 1;
                    secrets.push(err);
                }
                Err(err) if !is_istio(&err) => self.skipped += 1,
                Err(err) => {
                    self.documents += 1;
                    self.invalid_documents += 1;
                    self.problems.push(Problem {
                        file: file.to_owned(),
                        document: Some(err.index + 1),
                        line: err.line,
                        kind: err.kind,
                        namespace: err.namespace,
                        name: err.name,
                        field: err.field,
                        message: err.message,
                    });
                }
                Ok(document) => {
                    self.documents += 1;
                    let errors = document.validate();
                    if !errors.is_empty() {
                        self.invalid_documents += 1;
                    }
                    let object = &document.object;
                    let first = self.problems.len();
                    for error in errors {
                        self.problems.push(Problem {
                            file: file.to_owned(),
                            document: Some(document.index + 1),
                            line: document.line_of(&error.field),
                            kind: Some(object.kind().to_string()),
                            namespace: object.namespace().map(str::to_owned),
                            name: Some(object.name().to_owned()).filter(|n| !n.is_empty()),
                            field: Some(error.field),
                            message: error.message,
                        });
                    }
                    // In file order; problems on one line keep the validator's order.
                    self.problems[first..].sort_by_key(|p| p.line);
                    if self.problems.len() == first {
                        self.warn_unhonoured(file, &document);
                    }
                }
            }
        }
        let unreadable = self.credentials.read_secrets(file, text, &secrets);
        self.warnings.extend(unreadable);
    }

    /// Checks what needs every file read first: the Gateways' Secrets, the Sidecars' egress
    /// port protocols.
    pub fn finish(&mut self) {
        let warnings = self.credentials.warnings();
        self.warnings.extend(warnings);
        let warnings = self.egress_protocols.warnings();
        self.warnings.extend(warnings);
    }

    /// Warnings for what a valid document asks that capstan does not do yet.
    fn warn_unhonoured(&mut self, file: &str, document: &capstan_crds::Document) {
        let object = &document.object;
        let warning = |line, field, message| Problem {
            file: file.to_owned(),
            document: Some(document.index + 1),
            line,
            kind: Some(object.kind().to_string()),
            namespace: object.namespace().map(str::to_owned),
            name: Some(object.name().to_owned()).filter(|n| !n.is_empty()),
            field,
            message,
        };
        if !unsupported::kind_is_translated(object.kind()) {
            self.warnings.push(warning(
                None,
                None,
                unsupported::kind_message(object.kind()),
            ));
        }
        let mut problems = unsupported::fields(object);
        if let IstioObject::AuthorizationPolicy(ap) = object {
            problems.extend(unsupported::custom_provider(
                &object.key(),
                &ap.spec,
                self.extension_providers.as_ref(),
            ));
        }
        if let IstioObject::VirtualService(vs) = object {
            let spec = &vs.spec;
            // What `run` reports as it reads the routes (a fault it cannot apply, ...).
            let (_, route_problems) =
                crate::model::routing::http_routes(&spec.http, &object.key(), "cluster.local");
            problems.extend(route_problems);
            let for_sidecars =
                spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
            problems.extend(unsupported::sidecar_stream_routes(
                &object.key(),
                for_sidecars,
                !spec.tcp.is_empty(),
                !spec.tls.is_empty(),
            ));
        }
        if let IstioObject::PeerAuthentication(_)
        | IstioObject::AuthorizationPolicy(_)
        | IstioObject::RequestAuthentication(_) = object
        {
            problems.push(unsupported::inbound_policy_capture_only(&object.key()));
        }
        if let IstioObject::Sidecar(sidecar) = object {
            let spec = &sidecar.spec;
            let scope =
                crate::model::sidecar_scope::SidecarScope::new(object.key(), spec, "cluster.local");
            problems.extend(scope.problems().iter().cloned());
            let sets = unsupported::CaptureOnly {
                outbound_policy: spec.outbound_traffic_policy.is_some(),
                ingress: !spec.ingress.is_empty(),
                inbound_pool: spec.inbound_connection_pool.is_some(),
                bound_egress: (spec.egress.iter())
                    .any(crate::model::sidecar_scope::BoundEgress::binds),
            };
            problems.extend(unsupported::sidecar_capture_only(&object.key(), sets));
        }
        for problem in problems {
            let line = document.line_of(&problem.field);
            self.warnings
                .push(warning(line, Some(problem.field), problem.message));
        }
        self.credentials
            .note_gateway(document, warning(None, None, String::new()));
        self.credentials
            .note_rule(document, warning(None, None, String::new()));
        self.egress_protocols
            .note(document, warning(None, None, String::new()));
    }

    /// The closing line.
    pub fn summary(&self) -> String {
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let skipped = if self.skipped > 0 {
            format!(
                "; {} skipped (not Istio configuration)",
                plural(self.skipped, "document")
            )
        } else {
            String::new()
        };
        let scope = format!(
            "{} in {}{skipped}",
            plural(self.documents, "Istio document"),
            plural(self.files, "file")
        );
        let warnings = if self.warnings.is_empty() {
            String::new()
        } else {
            format!(
                " ({} about config capstan does not apply yet)",
                plural(self.warnings.len(), "warning")
            )
        };
        if self.problems.is_empty() {
            format!("valid: {scope}{warnings}")
        } else {
            format!(
                "invalid: {} in {} of {scope}",
                plural(self.problems.len(), "error"),
                self.invalid_documents
            )
        }
    }
}

/// Whether a document that failed to parse is meant as Istio configuration: its
/// `apiVersion` names an `*.istio.io` group, or its kind is one capstan reads.
fn is_istio(err: &DocumentError) -> bool {
    match err.reason {
        DocumentErrorReason::UnsupportedKind | DocumentErrorReason::UnsupportedApiVersion => {
            let group = err
                .api_version
                .as_deref()
                .and_then(|v| v.split_once('/'))
                .map(|(group, _)| group);
            let known_kind = err
                .kind
                .as_deref()
                .is_some_and(|k| k.parse::<capstan_crds::Kind>().is_ok());
            known_kind || group.is_some_and(|g| g.ends_with(".istio.io"))
        }
        _ => true,
    }
}

/// The files an argument names: itself, or the YAML/JSON files under a directory.
pub(crate) fn expand(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !path.is_dir() {
        // Reading it reports a missing file.
        out.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        let hidden = entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if entry.is_dir() {
            expand(&entry, out)?;
        } else if matches!(
            entry.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(entry);
        }
    }
    Ok(())
}

/// Runs the command; returns the exit status.
pub fn run(args: &ValidateArgs) -> i32 {
    let mut report = Report::default();
    if let Some(path) = &args.mesh_config {
        match crate::mesh_config::MeshConfig::read(path) {
            Ok(config) => {
                for field in &config.not_applied {
                    eprintln!(
                        "warning: {}: {field}: not applied by capstan",
                        path.display()
                    );
                }
                report.extension_providers = Some(config.extension_providers);
            }
            Err(err) => {
                eprintln!("capstan validate: {err}");
                return EXIT_USAGE;
            }
        }
    }
    for arg in &args.files {
        if arg == "-" {
            let mut text = String::new();
            if let Err(err) = std::io::stdin().read_to_string(&mut text) {
                eprintln!("capstan validate: cannot read standard input: {err}");
                return EXIT_USAGE;
            }
            report.check_text(STDIN_NAME, &text);
            continue;
        }
        let mut files = Vec::new();
        if let Err(err) = expand(Path::new(arg), &mut files) {
            eprintln!("capstan validate: {arg}: {err}");
            return EXIT_USAGE;
        }
        for file in files {
            let name = file.display().to_string();
            match std::fs::read(&file) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => report.check_text(&name, &text),
                    Err(_) => {
                        report.files += 1;
                        report.problems.push(Problem {
                            file: name,
                            document: None,
                            line: None,
                            kind: None,
                            namespace: None,
                            name: None,
                            field: None,
                            message: "not UTF-8 text".to_owned(),
                        });
                    }
                },
                Err(err) => {
                    eprintln!("capstan validate: {name}: {err}");
                    return EXIT_USAGE;
                }
            }
        }
    }
    report.finish();
    if let Err(err) = print(&report, args.output) {
        eprintln!("capstan validate: cannot write the report: {err}");
        return EXIT_USAGE;
    }
    if report.problems.is_empty() {
        EXIT_VALID
    } else {
        EXIT_INVALID
    }
}

fn print(report: &Report, format: Format) -> std::io::Result<()> {
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        Format::Text => {
            for problem in &report.problems {
                writeln!(out, "{problem}")?;
            }
            writeln!(out, "{}", report.summary())?;
        }
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &report.problems)?;
            writeln!(out)?;
            eprintln!("{}", report.summary());
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests;
