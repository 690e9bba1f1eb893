//! The Cloud Map source's metrics: calls by operation, failures by operation and AWS code,
//! whether the last poll succeeded, and what it cost.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::api::ApiError;
use super::poll::Calls;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    operation: String,
    code: String,
}

#[derive(Clone, Debug)]
pub struct CloudMapMetrics {
    calls: Family<OperationLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    synced: Gauge,
    last_success: Gauge,
    services: Gauge,
    poll_seconds: Histogram,
}

impl Default for CloudMapMetrics {
    fn default() -> Self {
        CloudMapMetrics {
            calls: Family::default(),
            errors: Family::default(),
            synced: Gauge::default(),
            last_success: Gauge::default(),
            services: Gauge::default(),
            poll_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        }
    }
}

impl CloudMapMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cloud_map_calls",
            "Cloud Map API calls made, by operation",
            self.calls.clone(),
        );
        registry.register(
            "cloud_map_errors",
            "Cloud Map polls that failed, by the operation that failed and AWS's error code (ThrottlingException: AWS asked to slow down)",
            self.errors.clone(),
        );
        registry.register(
            "cloud_map_synced",
            "1 when the last Cloud Map poll succeeded; 0 while capstan serves the last good view after a failure",
            self.synced.clone(),
        );
        registry.register(
            "cloud_map_last_success_timestamp_seconds",
            "When a Cloud Map poll last succeeded (Unix time)",
            self.last_success.clone(),
        );
        registry.register(
            "cloud_map_services",
            "Cloud Map services served",
            self.services.clone(),
        );
        registry.register(
            "cloud_map_poll_seconds",
            "Time one complete Cloud Map poll took",
            self.poll_seconds.clone(),
        );
    }

    pub(super) fn polled(&self, calls: &Calls, services: usize, took: Duration) {
        self.count(calls);
        self.synced.set(1);
        self.services.set(services as i64);
        self.poll_seconds.observe(took.as_secs_f64());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_success.set(now.as_secs() as i64);
    }

    pub(super) fn failed(&self, calls: &Calls, err: &ApiError) {
        self.count(calls);
        self.synced.set(0);
        self.errors
            .get_or_create(&ErrorLabels {
                operation: err.operation.to_string(),
                code: err.code.clone().unwrap_or_else(|| "none".into()),
            })
            .inc();
    }

    fn count(&self, calls: &Calls) {
        for (op, n) in calls {
            self.calls
                .get_or_create(&OperationLabel {
                    operation: op.to_string(),
                })
                .inc_by(*n);
        }
    }
}
