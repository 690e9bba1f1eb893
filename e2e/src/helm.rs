//! helm for the chart tests (`e2e/tests/helm_chart.rs`): the real upstream binary that
//! `scripts/helm.sh` installs, run with a private home so it never reads or writes the user's
//! helm configuration, and rendered manifests turned into JSON objects to assert on.
//!
//! Binaries: `$HELM_BIN`, else the path in `$CAPSTAN_TOOLS_DIR/helm-path`; helm 4 from
//! `$HELM4_BIN`, else `$CAPSTAN_TOOLS_DIR/helm4-path` (`make helm` writes both). A missing
//! binary fails, never skips.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::kube::kubectl;
use crate::locate;

/// Upper bound on one helm run; an install into the test apiserver takes a few seconds.
pub const HELM_TIMEOUT: Duration = Duration::from_secs(120);

/// Which helm major version to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelmVersion {
    V3,
    V4,
}

/// The helm binary of `version`: its env var, else the path file scripts/helm.sh wrote.
pub fn helm_bin(version: HelmVersion) -> anyhow::Result<PathBuf> {
    let (var, record, arg) = match version {
        HelmVersion::V3 => ("HELM_BIN", "helm-path", ""),
        HelmVersion::V4 => ("HELM4_BIN", "helm4-path", " 4"),
    };
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{var}={} is not a file", p.display());
        }
        return Ok(p);
    }
    let record = locate::tools_dir().join(record);
    let Ok(text) = std::fs::read_to_string(&record) else {
        bail!(
            "helm not installed: {var} is unset and {} does not exist; run `make helm` \
             (scripts/helm.sh{arg}) or set {var}",
            record.display()
        );
    };
    let p = PathBuf::from(text.trim());
    if !p.is_file() {
        bail!(
            "{} names {}, which is not a file; rerun `make helm`",
            record.display(),
            p.display()
        );
    }
    Ok(p)
}

/// A chart folder of this repository: `charts/<name>`.
pub fn chart_dir(name: &str) -> PathBuf {
    locate::repo_dir().join("charts").join(name)
}

/// What one helm run printed, and whether it succeeded.
#[derive(Debug, Clone)]
pub struct HelmOutput {
    pub command: String,
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl HelmOutput {
    /// stdout if helm exited 0, else an error with the command and both outputs.
    pub fn into_result(self) -> anyhow::Result<String> {
        if self.success {
            return Ok(self.stdout);
        }
        bail!(
            "`{}` failed:\nstdout:\n{}\nstderr:\n{}",
            self.command,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// helm with a home of its own (config, cache, data), removed on drop.
#[derive(Debug)]
pub struct Helm {
    bin: PathBuf,
    home: TempDir,
}

impl Helm {
    pub fn new(version: HelmVersion) -> anyhow::Result<Self> {
        Ok(Self {
            bin: helm_bin(version)?,
            home: tempfile::Builder::new().prefix("capstan-helm-").tempdir()?,
        })
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// `helm <args>`, whatever its exit status; fails only if it cannot run or hangs.
    pub async fn output(&self, args: &[&str]) -> anyhow::Result<HelmOutput> {
        let command = format!("helm {}", args.join(" "));
        let home = self.home.path();
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(args)
            .env_remove("KUBECONFIG")
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("running {} ({command})", self.bin.display()))?;
        let output = tokio::time::timeout(HELM_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("`{command}` took over {HELM_TIMEOUT:?}; killed"))?
            .with_context(|| format!("waiting for `{command}`"))?;
        Ok(HelmOutput {
            command,
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// `helm <args>`: stdout, or an error with both outputs.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        self.output(args).await?.into_result()
    }

    /// `helm template <release> <chart> -n <namespace> <extra>`, as JSON objects.
    pub async fn template(
        &self,
        chart: &Path,
        release: &str,
        namespace: &str,
        extra: &[&str],
    ) -> anyhow::Result<Vec<Value>> {
        let chart = path_str(chart)?;
        let mut args = vec!["template", release, chart, "--namespace", namespace];
        args.extend_from_slice(extra);
        let yaml = self.run(&args).await?;
        yaml_objects(&yaml).await
    }
}

/// The Kubernetes objects of a multi-document YAML stream, as JSON. kubectl parses them (the
/// e2e crate has no YAML parser of its own) with `annotate --local`, which never contacts a
/// server; the annotation it adds, [`PARSED_ANNOTATION`], is the only change.
pub async fn yaml_objects(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let cache = tempfile::Builder::new()
        .prefix("capstan-kubectl-")
        .tempdir()?;
    let annotation = format!("{PARSED_ANNOTATION}=1");
    let out = kubectl::run(
        Path::new("/dev/null"),
        cache.path(),
        &["annotate", "--local", "-f", "-", &annotation, "-o", "json"],
        Some(yaml),
    )
    .await?
    .into_result()?;
    let mut objects = Vec::new();
    for value in serde_json::Deserializer::from_str(&out).into_iter::<Value>() {
        let value = value.context("kubectl printed something other than JSON objects")?;
        // Several documents come as a List.
        match value.get("items").and_then(Value::as_array) {
            Some(items) if value["kind"] == "List" => objects.extend(items.iter().cloned()),
            _ => objects.push(value),
        }
    }
    Ok(objects)
}

/// The annotation [`yaml_objects`] adds to every object.
pub const PARSED_ANNOTATION: &str = "e2e.capstan.io/parsed";

/// The object of `kind` named `name` among `objects`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| {
            let have: Vec<String> = objects
                .iter()
                .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
                .collect();
            format!("no {kind} {name:?} rendered (have {have:?})")
        })
}

/// How many objects of `kind` there are.
pub fn count(objects: &[Value], kind: &str) -> usize {
    objects.iter().filter(|o| o["kind"] == kind).count()
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}
