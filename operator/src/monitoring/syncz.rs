//! The per-proxy views of the monitoring server: `/debug/syncz` (where each connected proxy
//! stands, per xDS type) and `/debug/config_dump?proxy=ID` (what the current snapshot holds
//! for that proxy). The syncz entries are also what `capstan proxy-status` reads back, so both
//! sides share these types.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use capstan_xds::{Connection, NackRecord, Role, SnapshotCache, TYPES, type_url};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One connected proxy in `/debug/syncz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncEntry {
    /// The proxy's node id.
    pub node: String,
    pub namespace: Option<String>,
    /// From an Istio-style node id (`TYPE~IP~POD.NAMESPACE~DOMAIN`).
    pub pod: Option<String>,
    /// `sotw` or `delta`.
    pub protocol: String,
    /// The proxy's own version (Envoy's build version), if its node said.
    pub proxy_version: Option<String>,
    /// RFC 3339, UTC.
    pub connected_at: String,
    /// The capstan instance serving the proxy (istioctl's ISTIOD column).
    pub control_plane: String,
    /// The snapshot version in capstan's cache when the view was taken.
    pub snapshot_version: u64,
    /// By short type name (`cds`, `eds`, `lds`, `rds`, `sds`).
    pub types: BTreeMap<String, TypeEntry>,
}

/// One xDS type of one proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeEntry {
    /// Snapshot version of the last response sent.
    pub sent: Option<u64>,
    /// Snapshot version of the last response the proxy acknowledged.
    pub acked: Option<u64>,
    /// Nonce of the last response sent.
    pub nonce: Option<String>,
    /// `SYNCED`, `STALE` (sent, not answered yet), `NACKED` (the last response was
    /// rejected) or `NOT SENT`.
    pub status: String,
    /// The last response of this type the proxy rejected, even if a later one was accepted.
    #[serde(default)]
    pub last_nack: Option<NackEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NackEntry {
    pub version: u64,
    pub nonce: String,
    pub message: String,
    /// RFC 3339, UTC.
    pub at: String,
}

/// Every identified proxy connected to `cache`, oldest connection first. Streams that have
/// not sent their first request yet are left out: nothing is known about them.
pub fn syncz(cache: &SnapshotCache, control_plane: &str) -> Vec<SyncEntry> {
    let snapshot_version = cache.current().snapshot.version();
    cache
        .connections()
        .list()
        .iter()
        .filter_map(|c| entry(c, control_plane, snapshot_version))
        .collect()
}

fn entry(connection: &Connection, control_plane: &str, snapshot_version: u64) -> Option<SyncEntry> {
    let proxy = connection.proxy()?;
    let types = (0..TYPES)
        .filter_map(|index| {
            let sync = connection.type_sync(index)?;
            let name = type_url::short(type_url::PUSH_ORDER[index]).to_string();
            Some((
                name,
                TypeEntry {
                    sent: sync.sent.map(|s| s.version),
                    acked: sync.acked.map(|a| a.version),
                    nonce: sync.sent.map(|s| s.nonce.to_string()),
                    status: sync.status.as_str().to_string(),
                    last_nack: sync.last_nack.as_ref().map(nack_entry),
                },
            ))
        })
        .collect();
    Some(SyncEntry {
        node: proxy.id.clone(),
        namespace: proxy.namespace.as_deref().map(str::to_string),
        pod: proxy.pod_name().map(str::to_string),
        protocol: connection.protocol().as_str().to_string(),
        proxy_version: connection.agent_version().map(str::to_string),
        connected_at: rfc3339(connection.connected_at()),
        control_plane: control_plane.to_string(),
        snapshot_version,
        types,
    })
}

fn nack_entry(nack: &NackRecord) -> NackEntry {
    NackEntry {
        version: nack.version,
        nonce: nack.nonce.to_string(),
        message: nack.message.clone(),
        at: rfc3339(nack.at),
    }
}

/// What the current snapshot holds for the connected proxy `node_id`, per type: each
/// resource's name, content version and encoded size. This is the proxy's whole view (every
/// resource whose variant selects it), not only the names it subscribed to. `None` if no
/// such proxy is connected.
pub fn config_dump(cache: &SnapshotCache, node_id: &str) -> Option<Value> {
    let connection = cache.connections().find(node_id)?;
    let proxy = connection.proxy()?;
    let state = cache.current();
    let types: serde_json::Map<String, Value> = (0..TYPES)
        .map(|index| {
            let resources: Vec<Value> = state
                .snapshot
                .view(index, proxy)
                .map(|r| json!({"name": r.name(), "version": r.version_hex(), "size": r.size()}))
                .collect();
            let url = type_url::PUSH_ORDER[index];
            (
                type_url::short(url).to_string(),
                json!({"type_url": url, "resources": resources}),
            )
        })
        .collect();
    let role = match proxy.role {
        Role::Sidecar => "sidecar",
        Role::Router => "router",
    };
    Some(json!({
        "node": proxy.id,
        "role": role,
        "namespace": proxy.namespace.as_deref(),
        "labels": proxy.labels,
        "protocol": connection.protocol().as_str(),
        "snapshot_version": state.snapshot.version(),
        "types": types,
    }))
}

/// `t` as RFC 3339 in UTC, to the second (what a person reading a status page needs).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap_day = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723);
        assert_eq!(rfc3339(leap_day), "2000-02-29T01:02:03Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_767_225_599);
        assert_eq!(rfc3339(later), "2025-12-31T23:59:59Z");
    }
}
