//! VirtualService `retries` as Envoy's route `RetryPolicy`, the way istiod converts them
//! (pilot/pkg/networking/core/route/retry/retry.go): a route without `retries` gets Istio's
//! default policy, `attempts: 0` none, and a `retries` block overrides the default's fields
//! it sets.

use envoy_types::pb::envoy::config::route::v3::retry_policy::{
    RetryBackOff, RetryHostPredicate, RetryPriority, retry_host_predicate, retry_priority,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::{RetryPolicy, VirtualHost};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;

use super::convert::duration;
use crate::model::routing::Retries;

/// Istio's default conditions.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// Istio's default number of retries (after the first try).
pub const DEFAULT_ATTEMPTS: u32 = 2;

/// The policy for a route's `retries`; `None` disables retries. A route to a single
/// destination balanced by consistent hash (`consistent_hash`) keeps retrying the same host,
/// as istiod's default for it does: no `previous_hosts` predicate.
pub fn retry_policy(retries: &Retries, consistent_hash: bool) -> Option<RetryPolicy> {
    let mut out = default_policy();
    if consistent_hash {
        out.retry_host_predicate.clear();
    }
    let policy = match retries {
        Retries::Default => return Some(out),
        Retries::Disabled => return None,
        Retries::Policy(policy) => policy,
    };
    out.num_retries = Some(UInt32Value {
        value: policy.attempts,
    });
    if let Some(retry_on) = &policy.retry_on {
        let (conditions, codes) = parse_retry_on(retry_on);
        out.retry_on = conditions;
        // Status codes alone need Envoy's condition that makes it look at them.
        if !codes.is_empty() && !out.retry_on.contains("retriable-status-codes") {
            if !out.retry_on.is_empty() {
                out.retry_on.push(',');
            }
            out.retry_on.push_str("retriable-status-codes");
        }
        out.retriable_status_codes = codes;
    }
    if let Some(timeout) = policy.per_try_timeout {
        out.per_try_timeout = Some(duration(timeout));
    }
    if let Some(ignore) = policy.retry_ignore_previous_hosts {
        out.retry_host_predicate = if ignore {
            vec![previous_hosts()]
        } else {
            Vec::new()
        };
    }
    if policy.retry_remote_localities {
        out.retry_priority = Some(RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".to_string(),
            config_type: Some(retry_priority::ConfigType::TypedConfig(pack_any(
                PreviousPrioritiesConfig {
                    update_frequency: 2,
                },
            ))),
        });
    }
    if let Some(backoff) = policy.backoff {
        out.retry_back_off = Some(RetryBackOff {
            base_interval: Some(duration(backoff)),
            ..Default::default()
        });
    }
    Some(out)
}

/// Istio's default: 2 retries on connection failures, refused streams, gRPC `unavailable`
/// and `cancelled` and HTTP 503, each on another host than those tried (up to 5 picks).
pub fn default_policy() -> RetryPolicy {
    RetryPolicy {
        num_retries: Some(UInt32Value {
            value: DEFAULT_ATTEMPTS,
        }),
        retry_on: DEFAULT_RETRY_ON.to_string(),
        retriable_status_codes: vec![503],
        retry_host_predicate: vec![previous_hosts()],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

fn previous_hosts() -> RetryHostPredicate {
    RetryHostPredicate {
        name: "envoy.retry_host_predicates.previous_hosts".to_string(),
        config_type: Some(retry_host_predicate::ConfigType::TypedConfig(pack_any(
            PreviousHostsPredicate {},
        ))),
    }
}

/// A virtual host whose routes all carry one retry policy: the policy said once, on the
/// virtual host, and not on each route. Envoy reads a route without a policy of its own as
/// having its virtual host's, so what is served is the same; but Envoy builds a policy (and
/// its host predicate) per route that states one, and with Istio's default on every route
/// that was half the time Envoy took to apply a large route configuration (BENCHMARKS.md).
/// (Redirects and direct responses send nothing upstream: a policy does not apply to them.)
/// When the forwarding routes differ (a `retries` block, retries off), each keeps its own
/// and nothing is moved: a route without a policy would take the virtual host's.
pub fn hoist_shared_policy(virtual_host: &mut VirtualHost) {
    let mut policies = virtual_host
        .routes
        .iter()
        .filter_map(|route| match &route.action {
            Some(Action::Route(action)) => Some(action.retry_policy.as_ref()),
            _ => None,
        });
    let Some(Some(first)) = policies.next() else {
        return;
    };
    if !policies.all(|p| p == Some(first)) {
        return;
    }
    let shared = first.clone();
    for route in &mut virtual_host.routes {
        if let Some(Action::Route(action)) = &mut route.action {
            action.retry_policy = None;
        }
    }
    virtual_host.retry_policy = Some(shared);
}

/// Splits `retryOn` into Envoy conditions and HTTP status codes (a number that is a known
/// HTTP status, as Go's `http.StatusText` knows them).
fn parse_retry_on(retry_on: &str) -> (String, Vec<u32>) {
    let mut conditions = Vec::new();
    let mut codes = Vec::new();
    for part in retry_on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>() {
            Ok(code) if is_known_status(code) => codes.push(code),
            _ => conditions.push(part),
        }
    }
    (conditions.join(","), codes)
}

/// The status codes Go's `net/http` names.
fn is_known_status(code: u32) -> bool {
    matches!(
        code,
        100..=103
            | 200..=208
            | 226
            | 300..=305
            | 307
            | 308
            | 400..=418
            | 421..=426
            | 428
            | 429
            | 431
            | 451
            | 500..=508
            | 510
            | 511
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction};

    use super::*;
    use crate::model::routing::RetryPolicy as Policy;

    fn policy(attempts: u32, retry_on: Option<&str>) -> Policy {
        Policy {
            attempts,
            per_try_timeout: None,
            retry_on: retry_on.map(str::to_string),
            retry_remote_localities: false,
            retry_ignore_previous_hosts: None,
            backoff: None,
        }
    }

    #[test]
    fn no_retries_block_gets_istios_default() {
        let out = retry_policy(&Retries::Default, false).expect("a policy");
        assert_eq!(out.num_retries, Some(UInt32Value { value: 2 }));
        assert_eq!(
            out.retry_on,
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
        );
        assert_eq!(out.retriable_status_codes, [503]);
        assert_eq!(out.host_selection_retry_max_attempts, 5);
        let predicates: Vec<&str> = out
            .retry_host_predicate
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(predicates, ["envoy.retry_host_predicates.previous_hosts"]);
        assert!(out.per_try_timeout.is_none() && out.retry_priority.is_none());
    }

    #[test]
    fn consistent_hash_keeps_retrying_the_same_host() {
        let out = retry_policy(&Retries::Default, true).expect("a policy");
        assert!(out.retry_host_predicate.is_empty());
        assert_eq!(out.num_retries, Some(UInt32Value { value: 2 }));
        let out = retry_policy(&Retries::Policy(policy(3, None)), true).expect("a policy");
        assert!(out.retry_host_predicate.is_empty());
    }

    #[test]
    fn zero_attempts_disable_retries() {
        assert_eq!(retry_policy(&Retries::Disabled, false), None);
    }

    #[test]
    fn attempts_and_conditions_override_the_default() {
        let out = retry_policy(&Retries::Policy(policy(3, Some("5xx"))), false).expect("a policy");
        assert_eq!(out.num_retries, Some(UInt32Value { value: 3 }));
        assert_eq!(out.retry_on, "5xx");
        // retryOn replaces the default's status codes too.
        assert!(out.retriable_status_codes.is_empty());
        assert_eq!(out.host_selection_retry_max_attempts, 5);
        assert_eq!(out.retry_host_predicate.len(), 1);
    }

    #[test]
    fn without_retry_on_the_default_conditions_stay() {
        let out = retry_policy(&Retries::Policy(policy(4, None)), false).expect("a policy");
        assert_eq!(out.num_retries, Some(UInt32Value { value: 4 }));
        assert_eq!(out.retry_on, DEFAULT_RETRY_ON);
        assert_eq!(out.retriable_status_codes, [503]);
    }

    #[test]
    fn status_codes_in_retry_on_become_retriable_status_codes() {
        let out = retry_policy(
            &Retries::Policy(policy(1, Some("gateway-error, 503,429,999"))),
            false,
        )
        .expect("a policy");
        // 999 is no HTTP status, so it is passed on as a condition, as istiod does.
        assert_eq!(out.retry_on, "gateway-error,999,retriable-status-codes");
        assert_eq!(out.retriable_status_codes, [503, 429]);

        let out = retry_policy(&Retries::Policy(policy(1, Some("503"))), false).expect("a policy");
        assert_eq!(out.retry_on, "retriable-status-codes");
        let out = retry_policy(
            &Retries::Policy(policy(1, Some("retriable-status-codes,502"))),
            false,
        )
        .expect("a policy");
        assert_eq!(out.retry_on, "retriable-status-codes");
        assert_eq!(out.retriable_status_codes, [502]);
    }

    #[test]
    fn per_try_timeout_localities_hosts_and_backoff() {
        let mut p = policy(2, None);
        p.per_try_timeout = Some(Duration::from_millis(250));
        p.retry_remote_localities = true;
        p.retry_ignore_previous_hosts = Some(false);
        p.backoff = Some(Duration::from_millis(40));
        let out = retry_policy(&Retries::Policy(p), false).expect("a policy");
        let timeout = out.per_try_timeout.expect("per-try timeout");
        assert_eq!((timeout.seconds, timeout.nanos), (0, 250_000_000));
        let priority = out.retry_priority.expect("retry priority");
        assert_eq!(priority.name, "envoy.retry_priorities.previous_priorities");
        match priority.config_type {
            Some(retry_priority::ConfigType::TypedConfig(any)) => {
                let config: PreviousPrioritiesConfig =
                    prost::Message::decode(any.value.as_slice()).expect("decodes");
                assert_eq!(config.update_frequency, 2);
            }
            other => panic!("no typed config: {other:?}"),
        }
        assert!(out.retry_host_predicate.is_empty());
        let backoff = out.retry_back_off.and_then(|b| b.base_interval);
        assert_eq!(backoff.map(|d| d.nanos), Some(40_000_000));
    }

    fn forwarding(policy: Option<RetryPolicy>) -> Route {
        Route {
            action: Some(Action::Route(RouteAction {
                retry_policy: policy,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn redirect() -> Route {
        Route {
            action: Some(Action::Redirect(Default::default())),
            ..Default::default()
        }
    }

    fn route_policies(vh: &VirtualHost) -> Vec<Option<&RetryPolicy>> {
        vh.routes
            .iter()
            .filter_map(|r| match &r.action {
                Some(Action::Route(a)) => Some(a.retry_policy.as_ref()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_policy_on_every_forwarding_route_is_said_once_on_the_virtual_host() {
        let default = default_policy();
        let mut vh = VirtualHost {
            routes: vec![
                forwarding(Some(default.clone())),
                redirect(),
                forwarding(Some(default.clone())),
            ],
            ..Default::default()
        };
        hoist_shared_policy(&mut vh);
        assert_eq!(vh.retry_policy, Some(default));
        assert_eq!(route_policies(&vh), [None, None]);
    }

    #[test]
    fn routes_with_different_policies_keep_their_own() {
        let default = default_policy();
        let three = retry_policy(&Retries::Policy(policy(3, None)), false);
        for routes in [
            // Retries off on one route: it would take the virtual host's policy.
            vec![forwarding(Some(default.clone())), forwarding(None)],
            vec![forwarding(None), forwarding(Some(default.clone()))],
            vec![forwarding(Some(default.clone())), forwarding(three.clone())],
            vec![forwarding(None), forwarding(None)],
            vec![redirect()],
        ] {
            let mut vh = VirtualHost {
                routes: routes.clone(),
                ..Default::default()
            };
            hoist_shared_policy(&mut vh);
            assert_eq!(vh.retry_policy, None);
            assert_eq!(vh.routes, routes);
        }
    }
}
