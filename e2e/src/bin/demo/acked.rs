//! Waiting until Envoy has acknowledged capstan's config, as capstan and Envoy both see it.

use super::*;

#[derive(Debug)]
pub struct Acked {
    pub snapshot_version: u64,
    /// Per xDS type: syncz status and the version Envoy acknowledged.
    pub types: Vec<(String, String, Option<u64>)>,
    /// Envoy's `*update_success` counters for CDS, LDS and each RDS subscription.
    pub updates: BTreeMap<String, u64>,
}

/// GET a path of capstan's monitoring server, requiring 200.
pub async fn monitoring_get(port: u16, path: &str) -> anyhow::Result<HttpResponse> {
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

pub async fn snapshot_version(monitoring_port: u16) -> anyhow::Result<u64> {
    let snapshot: Value = monitoring_get(monitoring_port, "/debug/snapshot")
        .await?
        .json()?;
    snapshot["version"]
        .as_u64()
        .with_context(|| format!("/debug/snapshot has no version: {snapshot}"))
}

/// One check of everything [`Acked`] stands for; fails saying what is not there yet.
pub async fn check_acked(
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

pub async fn wait_acked(
    demo: &mut Demo,
    bootstrap: &Bootstrap,
    args: &Args,
) -> anyhow::Result<Acked> {
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

pub fn print_acked(acked: &Acked) {
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
