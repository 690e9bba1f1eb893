//! The policy scenario of `capstan-kube-bench` (`--change policy`): one AuthorizationPolicy
//! edited R times, and per proxy the time from the edit (an HTTP PATCH through `kubectl
//! proxy`) until it has received and ACKed the `virtualInbound` listener carrying the new
//! rule — over the proxies the policy applies to (the 1 in 10 of its namespace) — and how
//! many of the others received any listener at all meanwhile (none should: the edit changes
//! nothing of theirs).
//!
//! Each proxy is a workload: proxy `k` claims endpoint 0 of service `k` (same namespace), so
//! both servers build it an inbound side (capstan with `--sidecar-listeners capture`).

use std::sync::atomic::{AtomicU64, Ordering};

use capstan_load::xds_scan::DeltaResponse;
use capstan_xds::type_url;

/// The namespace of the edited policy; proxy `k` is in `ns-(k % 10)`.
pub const POLICY_NS: &str = "ns-3";
const POLICY_NAME: &str = "bench-policy";
/// The listener that carries a workload's inbound filters, in capstan and istiod alike.
const INBOUND_LISTENER: &str = "virtualInbound";

/// The path edit `n` allows: what tells its version of the listener from the others.
fn marker(n: u64) -> String {
    format!("/bench-policy-{n}")
}

/// The policy as first created (edit 0): namespace-wide, one ALLOW rule on a path.
pub fn initial() -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {POLICY_NAME}, namespace: {POLICY_NS}}}
spec:
  rules: [{{to: [{{operation: {{paths: [\"{}\"]}}}}]}}]
",
        marker(0)
    )
}

/// The API path and JSON merge patch of edit `n`.
pub fn patch(n: u64) -> (String, String) {
    (
        format!(
            "/apis/security.istio.io/v1/namespaces/{POLICY_NS}/authorizationpolicies/{POLICY_NAME}"
        ),
        format!(
            r#"{{"spec":{{"rules":[{{"to":[{{"operation":{{"paths":["{}"]}}}}]}}]}}}}"#,
            marker(n)
        ),
    )
}

/// Whether a Delta response carries `virtualInbound` with edit `n`'s rule.
pub fn carries_edit(message: &[u8], n: u64) -> anyhow::Result<bool> {
    let response = DeltaResponse::parse(message)?;
    if response.type_url != type_url::LISTENER {
        return Ok(false);
    }
    let marker = marker(n);
    for resource in response.resources() {
        let resource = resource?;
        if resource.name == INBOUND_LISTENER && contains(resource.body, marker.as_bytes()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether a Delta response is a listener one.
pub fn is_listener(message: &[u8]) -> bool {
    DeltaResponse::parse(message).is_ok_and(|r| r.type_url == type_url::LISTENER)
}

/// The RBAC rule's path is a string inside the listener's nested messages, encoded as is.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Listener responses received, per proxy.
#[derive(Debug)]
pub struct ListenerCounts(Vec<AtomicU64>);

impl ListenerCounts {
    pub fn new(proxies: usize) -> Self {
        Self((0..proxies).map(|_| AtomicU64::new(0)).collect())
    }

    pub fn received(&self, proxy: usize) {
        if let Some(count) = self.0.get(proxy) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Vec<u64> {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}

/// How many proxies `outside` selects received a listener between `before` and `after`.
pub fn pushed_outside(before: &[u64], after: &[u64], outside: impl Fn(usize) -> bool) -> usize {
    before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(k, (b, a))| outside(*k) && a > b)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_sets_the_marker_path() {
        let (path, body) = patch(7);
        assert!(path.ends_with("/namespaces/ns-3/authorizationpolicies/bench-policy"));
        let value: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            value["spec"]["rules"][0]["to"][0]["operation"]["paths"][0],
            "/bench-policy-7"
        );
        assert!(initial().contains("\"/bench-policy-0\""));
    }

    #[test]
    fn only_proxies_outside_that_received_a_listener_count() {
        let (before, after) = ([1, 1, 1, 1], [2, 1, 2, 1]);
        assert_eq!(pushed_outside(&before, &after, |k| k != 0), 1);
        assert_eq!(pushed_outside(&before, &after, |_| true), 2);
    }
}
