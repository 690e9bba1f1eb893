//! Starting `capstan-upstream` instances (several per process).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::process::ChildProcess;
use crate::wait::wait_until;

/// Certificate and key (PEM files) of the TLS instances, and the CA their clients' certificates
/// must chain to (none: no client certificate asked for).
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub client_ca: Option<std::path::PathBuf>,
}

/// One `capstan-upstream` process serving several (service, version) instances.
#[derive(Debug)]
pub struct Upstreams {
    pub process: ChildProcess,
    addrs: BTreeMap<(String, String), SocketAddr>,
}

impl Upstreams {
    /// Starts `bin --serve NAME:VERSION:ADDR ...` (port 0 = any free port), logging to
    /// `<log_dir>/<name>.log`, and waits until every instance reports its bound address.
    pub async fn start(
        bin: &Path,
        instances: &[(&str, &str, SocketAddr)],
        log_dir: &Path,
        name: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with_tls(bin, instances, &[], None, log_dir, name).await
    }

    /// As [`Upstreams::start`], plus `tls_instances` served over TLS with `tls`.
    pub async fn start_with_tls(
        bin: &Path,
        instances: &[(&str, &str, SocketAddr)],
        tls_instances: &[(&str, &str, SocketAddr)],
        tls: Option<&UpstreamTls>,
        log_dir: &Path,
        name: &str,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        for (service, version, addr) in instances {
            cmd.arg("--serve")
                .arg(format!("{service}:{version}:{addr}"));
        }
        for (service, version, addr) in tls_instances {
            cmd.arg("--serve-tls")
                .arg(format!("{service}:{version}:{addr}"));
        }
        if let Some(tls) = tls {
            cmd.arg("--tls-cert").arg(&tls.cert);
            cmd.arg("--tls-key").arg(&tls.key);
            if let Some(ca) = &tls.client_ca {
                cmd.arg("--tls-client-ca").arg(ca);
            }
        }
        let instances = [instances, tls_instances].concat();
        let mut process =
            ChildProcess::spawn(name, &mut cmd, &log_dir.join(format!("{name}.log")))?;
        let addrs = wait_until(
            "upstreams to report their addresses",
            Duration::from_secs(20),
            async || {
                process.ensure_running()?;
                let addrs = parse_serving_lines(&process.log());
                anyhow::ensure!(
                    addrs.len() >= instances.len(),
                    "{} of {} upstreams up",
                    addrs.len(),
                    instances.len()
                );
                Ok(addrs)
            },
        )
        .await?;
        Ok(Self { process, addrs })
    }

    /// Starts one instance per (service, version) on a free loopback port.
    pub async fn start_on_free_ports(
        bin: &Path,
        instances: &[(&str, &str)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        let with_addrs: Vec<_> = instances.iter().map(|(s, v)| (*s, *v, any)).collect();
        Self::start(bin, &with_addrs, log_dir, "upstreams").await
    }

    pub fn addr(&self, service: &str, version: &str) -> anyhow::Result<SocketAddr> {
        self.addrs
            .get(&(service.to_string(), version.to_string()))
            .copied()
            .with_context(|| {
                format!(
                    "no upstream {service} {version} (have {:?})",
                    self.addrs.keys()
                )
            })
    }

    pub fn port(&self, service: &str, version: &str) -> anyhow::Result<u16> {
        Ok(self.addr(service, version)?.port())
    }

    /// How many requests a (plaintext) instance has answered, its control paths excepted.
    pub async fn count(&self, service: &str, version: &str) -> anyhow::Result<u64> {
        #[derive(serde::Deserialize)]
        struct Count {
            requests: u64,
        }
        let reply: Count = self.control(service, version, "count").await?.json()?;
        Ok(reply.requests)
    }

    /// Makes an instance answer every request with `status` until [`Upstreams::recover`].
    pub async fn fail(&self, service: &str, version: &str, status: u16) -> anyhow::Result<()> {
        self.control(service, version, &format!("fail?status={status}"))
            .await
            .map(drop)
    }

    pub async fn recover(&self, service: &str, version: &str) -> anyhow::Result<()> {
        self.control(service, version, "recover").await.map(drop)
    }

    async fn control(
        &self,
        service: &str,
        version: &str,
        what: &str,
    ) -> anyhow::Result<crate::http::HttpResponse> {
        let addr = self.addr(service, version)?;
        let mut client = crate::http::HttpClient::new(addr);
        let response = client
            .get("upstream", &format!("/__upstream/{what}"), &[])
            .await?;
        anyhow::ensure!(
            response.status == hyper::StatusCode::OK,
            "{service} {version} /__upstream/{what}: {} {}",
            response.status,
            response.text()
        );
        Ok(response)
    }
}

/// Parses `serving NAME VERSION on ADDR` lines.
fn parse_serving_lines(log: &str) -> BTreeMap<(String, String), SocketAddr> {
    log.lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("serving ")?.split(' ');
            let (service, version, on, addr) = (w.next()?, w.next()?, w.next()?, w.next()?);
            if on != "on" {
                return None;
            }
            Some((
                (service.to_string(), version.to_string()),
                addr.parse().ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_serving_lines() {
        let m = super::parse_serving_lines("$ cmd\nserving reviews v2 on 127.0.0.1:4000\nnoise\n");
        assert_eq!(m.len(), 1);
        assert_eq!(m[&("reviews".into(), "v2".into())].port(), 4000);
    }
}
