//! DestinationRules with wildcard hosts (`*.local`, `*`) built incrementally as a full build:
//! rules added, replaced by one naming the host, narrowed by a more specific wildcard, and
//! removed, with services coming after the rule.

use capstan_crds::Kind;

use super::tests::{check, delete, istio, service};
use crate::translate::test_support::destination_rule;

fn rule(namespace: &str, name: &str, host: &str, policy: &str) -> String {
    let rest =
        format!("  trafficPolicy: {policy}\n  subsets: [{{name: v1, labels: {{version: v1}}}}]\n");
    destination_rule(namespace, name, host, &rest)
}

const EXTERNAL: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: bookinfo}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
";

const TO_V1: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v1}}]}]
";

#[test]
fn wildcard_destination_rules_update_match_a_full_build() {
    let pool = "{connectionPool: {tcp: {maxConnections: 7}}}";
    let lb = "{loadBalancer: {simple: RANDOM}}";
    check(vec![
        istio(&rule("istio-system", "mesh", "*.local", pool)),
        // Services after the rule take it.
        service("reviews", &[("http", 9080)]),
        istio(EXTERNAL),
        istio(TO_V1),
        istio(&rule("istio-system", "everything", "*", lb)),
        istio(&rule(
            "bookinfo",
            "bookinfo",
            "*.bookinfo.svc.cluster.local",
            lb,
        )),
        istio(&rule("bookinfo", "reviews", "reviews", pool)),
        delete(Kind::DestinationRule, "bookinfo", "reviews"),
        istio(&rule("istio-system", "mesh", "*.local", lb)),
        delete(Kind::DestinationRule, "bookinfo", "bookinfo"),
        delete(Kind::DestinationRule, "istio-system", "mesh"),
        delete(Kind::DestinationRule, "istio-system", "everything"),
    ]);
}

/// Rules per client namespace (the client's own, the service's, the root's) built
/// incrementally as a full build, as rules of each come and go.
#[test]
fn per_namespace_destination_rules_update_match_a_full_build() {
    let pool = "{connectionPool: {tcp: {maxConnections: 7}}}";
    let lb = "{loadBalancer: {simple: RANDOM}}";
    let kept = |namespace: &str, name: &str, host: &str| {
        let rest = format!(
            "  exportTo: [.]\n  trafficPolicy: {lb}\n  subsets: [{{name: v2, labels: {{version: v2}}}}]\n"
        );
        destination_rule(namespace, name, host, &rest)
    };
    check(vec![
        service("reviews", &[("http", 9080)]),
        istio(TO_V1),
        istio(&rule("istio-system", "mesh", "*.local", pool)),
        istio(&rule(
            "team-a",
            "reviews",
            "reviews.bookinfo.svc.cluster.local",
            lb,
        )),
        istio(&kept("bookinfo", "reviews", "reviews")),
        istio(&kept("istio-system", "gateways", "*.local")),
        istio(&rule("bookinfo", "reviews", "reviews", lb)),
        delete(Kind::DestinationRule, "istio-system", "mesh"),
        delete(Kind::DestinationRule, "team-a", "reviews"),
        delete(Kind::DestinationRule, "bookinfo", "reviews"),
        delete(Kind::DestinationRule, "istio-system", "gateways"),
    ]);
}
