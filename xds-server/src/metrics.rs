//! Prometheus metrics of the push path.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::resource::type_url;
use crate::snapshot::TYPES;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
}

/// Handles to every metric, resolved once so the push path never looks labels up.
#[derive(Debug, Clone)]
pub struct Metrics {
    connected_sotw: Gauge,
    connected_delta: Gauge,
    pushes: [Counter; TYPES],
    resources: [Counter; TYPES],
    bytes: [Counter; TYPES],
    nacks: [Counter; TYPES],
    push_latency: Histogram,
    convergence: Histogram,
    snapshot_version: Gauge,
    families: Families,
}

#[derive(Debug, Clone)]
struct Families {
    connected: Family<ProtocolLabel, Gauge>,
    pushes: Family<TypeLabel, Counter>,
    resources: Family<TypeLabel, Counter>,
    bytes: Family<TypeLabel, Counter>,
    nacks: Family<TypeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

impl Metrics {
    pub fn new() -> Self {
        let families = Families {
            connected: Family::default(),
            pushes: Family::default(),
            resources: Family::default(),
            bytes: Family::default(),
            nacks: Family::default(),
        };
        let per_type = |family: &Family<TypeLabel, Counter>| -> [Counter; TYPES] {
            type_url::PUSH_ORDER.map(|t| {
                family
                    .get_or_create(&TypeLabel {
                        r#type: type_url::short(t),
                    })
                    .clone()
            })
        };
        let protocol = |p: &'static str| {
            families
                .connected
                .get_or_create(&ProtocolLabel { protocol: p })
                .clone()
        };
        Self {
            connected_sotw: protocol("sotw"),
            connected_delta: protocol("delta"),
            pushes: per_type(&families.pushes),
            resources: per_type(&families.resources),
            bytes: per_type(&families.bytes),
            nacks: per_type(&families.nacks),
            push_latency: latency_histogram(),
            convergence: latency_histogram(),
            snapshot_version: Gauge::default(),
            families,
        }
    }

    /// Adds every metric to `registry` under the `xds` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("xds");
        r.register(
            "connected_proxies",
            "ADS streams open, by protocol",
            self.families.connected.clone(),
        );
        r.register(
            "pushes",
            "Discovery responses sent, by type",
            self.families.pushes.clone(),
        );
        r.register(
            "pushed_resources",
            "Resources carried by discovery responses, by type",
            self.families.resources.clone(),
        );
        r.register(
            "push_bytes",
            "Bytes of discovery responses sent, by type",
            self.families.bytes.clone(),
        );
        r.register(
            "nacks",
            "Updates proxies rejected, by type",
            self.families.nacks.clone(),
        );
        r.register(
            "push_latency_seconds",
            "From a config change to its response being handed to the proxy's stream",
            self.push_latency.clone(),
        );
        r.register(
            "convergence_seconds",
            "From a config change to the proxy's ACK of it",
            self.convergence.clone(),
        );
        r.register(
            "snapshot_version",
            "Version of the newest snapshot",
            self.snapshot_version.clone(),
        );
    }

    pub(crate) fn connected(&self, delta: bool) -> &Gauge {
        if delta {
            &self.connected_delta
        } else {
            &self.connected_sotw
        }
    }

    pub(crate) fn pushed(&self, index: usize, resources: usize, bytes: usize) {
        self.pushes[index].inc();
        self.resources[index].inc_by(resources as u64);
        self.bytes[index].inc_by(bytes as u64);
    }

    pub(crate) fn nacked(&self, index: usize) {
        self.nacks[index].inc();
    }

    pub(crate) fn push_latency(&self, seconds: f64) {
        self.push_latency.observe(seconds);
    }

    pub(crate) fn converged(&self, seconds: f64) {
        self.convergence.observe(seconds);
    }

    pub(crate) fn snapshot_version(&self, version: u64) {
        self.snapshot_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.pushed(0, 3, 100);
        m.nacked(2);
        m.connected(true).inc();
        m.converged(0.01);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(text.contains("xds_pushes_total{type=\"cds\"} 1"), "{text}");
        assert!(
            text.contains("xds_push_bytes_total{type=\"cds\"} 100"),
            "{text}"
        );
        assert!(
            text.contains("xds_pushed_resources_total{type=\"cds\"} 3"),
            "{text}"
        );
        assert!(text.contains("xds_nacks_total{type=\"lds\"} 1"), "{text}");
        assert!(
            text.contains("xds_connected_proxies{protocol=\"delta\"} 1"),
            "{text}"
        );
        assert!(text.contains("xds_convergence_seconds_count 1"), "{text}");
    }
}
