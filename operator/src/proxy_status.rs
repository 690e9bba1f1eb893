//! `capstan proxy-status`: where every connected proxy stands, per xDS type, like `istioctl
//! proxy-status`. Reads `/debug/syncz` from a running capstan's monitoring server.

use std::time::Duration;

use anyhow::{Context, ensure};
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::monitoring::syncz::SyncEntry;

/// Connecting and reading the answer together; a capstan that hangs fails the command.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The types shown, by short name, in istioctl's column order.
const COLUMNS: [&str; 4] = ["cds", "lds", "eds", "rds"];

#[derive(Debug, Args)]
pub struct ProxyStatusArgs {
    /// Address (host:port) of capstan's monitoring server (`capstan run --monitoring-addr`).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub monitoring_addr: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One line per proxy: NAME, CDS, LDS, EDS, RDS, ISTIOD, VERSION.
    Table,
    /// The `/debug/syncz` entries.
    Json,
}

pub async fn run(args: ProxyStatusArgs) -> anyhow::Result<()> {
    let entries = fetch_syncz(&args.monitoring_addr).await?;
    match args.output {
        Format::Table => print!("{}", render_table(&entries)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
    }
    Ok(())
}

/// GETs and parses `/debug/syncz` from the monitoring server at `addr`.
pub async fn fetch_syncz(addr: &str) -> anyhow::Result<Vec<SyncEntry>> {
    let body = tokio::time::timeout(TIMEOUT, get(addr, "/debug/syncz"))
        .await
        .with_context(|| format!("GET http://{addr}/debug/syncz took over {TIMEOUT:?}"))??;
    serde_json::from_slice(&body)
        .with_context(|| format!("http://{addr}/debug/syncz did not answer with syncz entries"))
}

async fn get(addr: &str, path: &str) -> anyhow::Result<Bytes> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to capstan's monitoring server at {addr}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP/1.1 handshake with {addr}"))?;
    // Drives the connection; its errors surface on the request.
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(header::HOST, addr)
        .body(Empty::<Bytes>::new())?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the answer to GET http://{addr}{path}"))?
        .to_bytes();
    ensure!(
        status.is_success(),
        "GET http://{addr}{path} answered {status}: {}",
        String::from_utf8_lossy(&body).trim()
    );
    Ok(body)
}

/// The table `istioctl proxy-status` prints, one row per proxy ordered by node id; columns
/// padded to their widest cell.
pub fn render_table(entries: &[SyncEntry]) -> String {
    let header = std::iter::once("NAME".to_string())
        .chain(COLUMNS.map(str::to_ascii_uppercase))
        .chain(["ISTIOD".to_string(), "VERSION".to_string()]);
    let mut rows: Vec<Vec<String>> = vec![header.collect()];
    let mut sorted: Vec<&SyncEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.node.cmp(&b.node));
    for entry in sorted {
        let mut row = vec![entry.node.clone()];
        row.extend(COLUMNS.iter().map(|short| {
            entry
                .types
                .get(*short)
                .map_or_else(|| "NOT SENT".to_string(), |t| t.status.clone())
        }));
        row.push(entry.control_plane.clone());
        row.push(entry.proxy_version.clone().unwrap_or_else(|| "-".into()));
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitoring::ReadyState;
    use capstan_xds::SnapshotCache;
    use capstan_xds::ads::delta::DeltaStream;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

    const FIXTURE: &str = r#"[
      {
        "node": "sidecar~10.0.0.2~ratings-v1-xyz.bookinfo~bookinfo.svc.cluster.local",
        "namespace": "bookinfo", "pod": "ratings-v1-xyz", "protocol": "delta",
        "proxy_version": "1.40.0", "connected_at": "2025-01-01T00:00:00Z",
        "control_plane": "capstan-7d9f", "snapshot_version": 12,
        "types": {
          "cds": {"sent": 12, "acked": 12, "nonce": "9", "status": "SYNCED", "last_nack": null},
          "eds": {"sent": 12, "acked": 11, "nonce": "10", "status": "STALE", "last_nack": null},
          "lds": {"sent": 12, "acked": 12, "nonce": "7", "status": "SYNCED", "last_nack": null},
          "rds": {"sent": 12, "acked": 11, "nonce": "8", "status": "NACKED",
                  "last_nack": {"version": 12, "nonce": "8", "message": "bad regex",
                                "at": "2025-01-01T00:00:01Z"}}
        }
      },
      {
        "node": "router~10.0.0.1~gw.istio-system~istio-system.svc.cluster.local",
        "namespace": "istio-system", "pod": "gw", "protocol": "sotw",
        "proxy_version": null, "connected_at": "2025-01-01T00:00:00Z",
        "control_plane": "capstan-7d9f", "snapshot_version": 12,
        "types": {
          "cds": {"sent": 12, "acked": 12, "nonce": "3", "status": "SYNCED", "last_nack": null}
        }
      }
    ]"#;

    #[test]
    fn renders_one_aligned_row_per_proxy() {
        let entries: Vec<SyncEntry> = serde_json::from_str(FIXTURE).expect("fixture");
        let table = render_table(&entries);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        let cells = |line: &str| -> Vec<String> {
            line.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        };
        assert_eq!(
            cells(lines[0]),
            ["NAME", "CDS", "LDS", "EDS", "RDS", "ISTIOD", "VERSION"]
        );
        // Ordered by node id: the gateway first.
        assert_eq!(
            cells(lines[1]),
            [
                "router~10.0.0.1~gw.istio-system~istio-system.svc.cluster.local",
                "SYNCED",
                "NOT SENT",
                "NOT SENT",
                "NOT SENT",
                "capstan-7d9f",
                "-",
            ]
        );
        assert_eq!(
            cells(lines[2]),
            [
                "sidecar~10.0.0.2~ratings-v1-xyz.bookinfo~bookinfo.svc.cluster.local",
                "SYNCED",
                "SYNCED",
                "STALE",
                "NACKED",
                "capstan-7d9f",
                "1.40.0",
            ]
        );
        // Every column starts at the same offset on every line.
        for header in ["CDS", "ISTIOD", "VERSION"] {
            let at = lines[0].find(header).expect("header");
            assert!(
                lines[1..]
                    .iter()
                    .all(|l| l[at..].starts_with(|c: char| c != ' ') && l[..at].ends_with("   ")),
                "{header} misaligned:\n{table}"
            );
        }
    }

    #[test]
    fn no_proxies_is_just_the_header() {
        assert_eq!(
            render_table(&[]),
            "NAME   CDS   LDS   EDS   RDS   ISTIOD   VERSION\n"
        );
    }

    #[tokio::test]
    async fn reads_syncz_from_a_monitoring_server() {
        let cache = SnapshotCache::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("bound").to_string();
        let (_ready, ready) = tokio::sync::watch::channel(ReadyState::ready());
        let server = tokio::spawn(crate::monitoring::serve(
            listener,
            cache.clone(),
            prometheus_client::registry::Registry::default(),
            ready,
        ));
        let mut stream = DeltaStream::new(cache.clone());
        stream.on_request(
            DeltaDiscoveryRequest {
                node: Some(Node {
                    id: "sidecar~1.2.3.4~p.ns~ns.svc.cluster.local".into(),
                    ..Default::default()
                }),
                type_url: capstan_xds::type_url::LISTENER.into(),
                ..Default::default()
            },
            &cache.current(),
        );
        let entries = fetch_syncz(&addr).await.expect("syncz");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].node, "sidecar~1.2.3.4~p.ns~ns.svc.cluster.local");
        assert_eq!(entries[0].types["lds"].status, "STALE");
        let table = render_table(&entries);
        assert!(table.lines().nth(1).is_some_and(|l| l.contains("STALE")));
        server.abort();
        let _ = server.await;

        let refused = fetch_syncz(&addr).await;
        assert!(refused.is_err(), "no server any more");
    }
}
