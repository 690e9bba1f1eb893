//! What a fresh cluster gets before any test sees it: the Istio CRDs (Established and
//! served), namespace istio-system, and capstan's RBAC from the chart.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::KubeCluster;
use crate::locate;
use crate::wait::wait_until;

/// How long the CRDs get to become Established and served.
pub const CRD_TIMEOUT: Duration = Duration::from_secs(60);

/// Each kubectl run costs ~0.1-0.2 s, so this makes as few as it can (four).
pub(crate) async fn set_up(kube: &KubeCluster) -> anyhow::Result<()> {
    let repo = locate::repo_dir();
    let crd_dir = repo.join("crds/generated");
    let crds = crd_names(&crd_dir)?;
    // all.yaml holds the same ten CRDs as the per-kind files (a crds test keeps them in
    // step); applying the whole folder would send each one twice.
    kube.kubectl(&["apply", "-f", path_str(&crd_dir.join("all.yaml"))?])
        .await
        .context("applying crds/generated/all.yaml")?;

    let mut get_crds = vec!["get", "crds", "-o", "json"];
    get_crds.extend(crds.iter().map(String::as_str));
    wait_until(
        "the Istio CRDs to be Established",
        CRD_TIMEOUT,
        async || {
            let list: Value = serde_json::from_str(&kube.kubectl(&get_crds).await?)?;
            let pending = not_established(&list);
            anyhow::ensure!(pending.is_empty(), "not Established yet: {pending:?}");
            Ok(())
        },
    )
    .await?;
    // Established can precede the kinds showing up in discovery by a moment.
    let all = crds.join(",");
    wait_until("the Istio kinds to be served", CRD_TIMEOUT, async || {
        kube.kubectl(&["get", &all, "--all-namespaces", "-o", "name"])
            .await
            .map(drop)
    })
    .await?;

    let rbac_path = repo.join("charts/manifests/rbac.yaml");
    let rbac = std::fs::read_to_string(&rbac_path)
        .with_context(|| format!("reading {}", rbac_path.display()))?;
    // One apply, the namespace first (kubectl applies in document order).
    let yaml =
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: istio-system\n---\n{rbac}");
    kube.kubectl_apply_yaml(&yaml)
        .await
        .context("creating istio-system and applying charts/manifests/rbac.yaml")?;
    Ok(())
}

/// The CRD names (`plural.group`) from the per-kind files of crds/generated/.
fn crd_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let file = entry?.file_name().to_string_lossy().into_owned();
        if let Some(name) = file.strip_suffix(".yaml")
            && name.contains('.')
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    if names.is_empty() {
        bail!("no CRD files in {} (run `make crds`)", dir.display());
    }
    Ok(names)
}

/// Names of the CRDs in a `kubectl get crds -o json` list without `Established=True`.
fn not_established(list: &Value) -> Vec<String> {
    let items = list["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    items
        .iter()
        .filter(|crd| {
            !crd["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        })
        .map(|crd| crd["metadata"]["name"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_ten_crd_names() {
        let names = crd_names(&locate::repo_dir().join("crds/generated")).unwrap();
        assert_eq!(names.len(), 10, "{names:?}");
        assert!(names.contains(&"virtualservices.networking.istio.io".to_string()));
        assert!(!names.iter().any(|n| n == "all"));
    }

    #[test]
    fn lists_crds_not_yet_established() {
        let list = serde_json::json!({"items": [
            {"metadata": {"name": "a"}, "status": {"conditions": [
                {"type": "NamesAccepted", "status": "True"},
                {"type": "Established", "status": "True"}]}},
            {"metadata": {"name": "b"}, "status": {"conditions": [
                {"type": "Established", "status": "False"}]}},
            {"metadata": {"name": "c"}},
        ]});
        assert_eq!(not_established(&list), ["b", "c"]);
    }
}
