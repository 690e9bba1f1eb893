//! Config capstan accepts but does not act on yet, named field by field, so that `run` warns
//! and the object's status says so instead of the config being ignored silently.

use capstan_crds::networking::destination_rule as dr;
use capstan_crds::networking::service_entry as se_api;
use capstan_crds::networking::sidecar::CaptureMode;
use capstan_crds::{IstioObject, Kind, ObjectKey};

use crate::model::Problem;
use crate::model::sidecar_scope::{BoundEgress, bound_address};

/// The kinds whose objects capstan translates (partly, see [`fields`]).
pub fn kind_is_translated(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::ServiceEntry
            | Kind::DestinationRule
            | Kind::VirtualService
            | Kind::Gateway
            | Kind::WorkloadEntry
            | Kind::Sidecar
            | Kind::PeerAuthentication
            | Kind::AuthorizationPolicy
            | Kind::RequestAuthentication
    )
}

/// A PeerAuthentication or AuthorizationPolicy applies to workloads' inbound sides, which
/// only capture-mode sidecars have: `validate` says so always (it cannot know the mode),
/// `run` in direct mode.
pub fn inbound_policy_capture_only(key: &ObjectKey) -> Problem {
    let message = match key.kind {
        Kind::PeerAuthentication => {
            "applies to the inbound listeners of capture-mode sidecars (`capstan run \
             --sidecar-listeners capture`); direct-mode sidecars have none (clients still \
             originate mutual TLS to the endpoints it leaves it on)"
        }
        _ => {
            "applies to the inbound listeners of capture-mode sidecars (`capstan run \
             --sidecar-listeners capture`) and to gateway proxies; direct-mode sidecars have no \
             inbound listener"
        }
    };
    Problem {
        object: key.clone(),
        field: "spec".into(),
        message: message.into(),
    }
}

/// A `CUSTOM` AuthorizationPolicy whose provider `validate` cannot find among `providers`
/// (the mesh config's; `None`: none was given). Whether its service exists is for `run`.
pub fn custom_provider(
    key: &ObjectKey,
    spec: &capstan_crds::security::authorization_policy::AuthorizationPolicySpec,
    providers: Option<&crate::mesh_config::ExtensionProviders>,
) -> Option<Problem> {
    use crate::mesh_config::Provider;
    use capstan_crds::security::authorization_policy::Action;
    if spec.action != Some(Action::Custom) {
        return None;
    }
    let name = spec.provider.as_ref().map_or("", |p| p.name.as_str());
    let message = match providers.map(|p| p.get(name)) {
        None => format!(
            "CUSTOM asks the extension provider {name:?}, which `capstan run --mesh-config` \
             must define (give --mesh-config to check it here)"
        ),
        Some(None) => format!(
            "no extension provider {name:?} in the mesh config: the policy's rules would deny \
             every request they match"
        ),
        Some(Some(Provider::Invalid(reason))) => format!(
            "the extension provider {name:?} is unusable ({reason}): the policy's rules would \
             deny every request they match"
        ),
        Some(Some(Provider::Unsupported(kind))) => format!(
            "the extension provider {name:?} is {kind}, not an external authorizer: the \
             policy's rules would deny every request they match"
        ),
        Some(Some(Provider::ExtAuthzHttp(_) | Provider::ExtAuthzGrpc(_))) => return None,
    };
    Some(Problem {
        object: key.clone(),
        field: "spec.provider.name".into(),
        message,
    })
}

/// A security policy attached by `targetRef` (`single`) or `targetRefs`, if `by_reference`.
fn target_references(key: &ObjectKey, by_reference: bool, single: bool) -> Option<Problem> {
    by_reference.then(|| Problem {
        object: key.clone(),
        field: if single {
            "spec.targetRef"
        } else {
            "spec.targetRefs"
        }
        .into(),
        message: "attaches it to Gateway API gateways and waypoints, which capstan does not \
                  serve: it applies to no sidecar"
            .into(),
    })
}

/// What `validate`, `run` and the status condition say about an object of a kind capstan
/// does not translate.
pub fn kind_message(kind: Kind) -> String {
    format!("capstan validates {kind} but does not apply it to proxies yet")
}

/// `tcp` and `tls` routes a VirtualService has for sidecars, which only the capture-mode
/// listeners (`--sidecar-listeners capture`) apply: `validate` says so always (it cannot
/// know the mode), `run` in direct mode.
pub fn sidecar_stream_routes(
    key: &ObjectKey,
    for_sidecars: bool,
    tcp: bool,
    tls: bool,
) -> Vec<Problem> {
    let problem = |field: &str, what: &str| Problem {
        object: key.clone(),
        field: field.into(),
        message: format!(
            "{what} routing reaches sidecars only with `capstan run --sidecar-listeners \
             capture` (gateways apply it in every mode)"
        ),
    };
    let mut out = Vec::new();
    if for_sidecars && tcp {
        out.push(problem("spec.tcp", "TCP"));
    }
    if for_sidecars && tls {
        out.push(problem("spec.tls", "TLS"));
    }
    out
}

/// A `Sidecar`'s settings that only capture-mode sidecars (`--sidecar-listeners capture`)
/// apply: `validate` says so always (it cannot know the mode), `run` in direct mode.
pub fn sidecar_capture_only(key: &ObjectKey, sets: CaptureOnly) -> Vec<Problem> {
    let problem = |field: &str, message: &str| Problem {
        object: key.clone(),
        field: field.into(),
        message: format!(
            "applies to capture-mode sidecars (`capstan run --sidecar-listeners capture`); \
             {message}"
        ),
    };
    let mut out = Vec::new();
    if sets.outbound_policy {
        out.push(problem(
            "spec.outboundTrafficPolicy",
            "the direct listener answers 404 for a Host no service has",
        ));
    }
    if sets.ingress {
        out.push(problem(
            "spec.ingress",
            "direct-mode sidecars have no inbound listener",
        ));
    }
    if sets.inbound_pool {
        out.push(problem(
            "spec.inboundConnectionPool",
            "direct-mode sidecars have no inbound clusters",
        ));
    }
    if sets.bound_egress {
        out.push(problem(
            "spec.egress",
            "direct-mode sidecars have their one outbound listener; egress listeners with \
             captureMode NONE are not bound",
        ));
    }
    out
}

/// Which of a `Sidecar`'s capture-mode settings it sets.
#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureOnly {
    pub outbound_policy: bool,
    pub ingress: bool,
    pub inbound_pool: bool,
    pub bound_egress: bool,
}

/// The fields of `object` that are set and not honoured. Kinds capstan does not translate at
/// all are reported by the caller, once for the whole object.
pub fn fields(object: &IstioObject) -> Vec<Problem> {
    let key = object.key();
    let mut out = Vec::new();
    // Problems with a message of their own, added after the others.
    let mut extra = Vec::new();
    let mut not_applied = |field: String, what: &str| {
        out.push(Problem {
            object: key.clone(),
            field,
            message: format!("{what} is not applied yet; the rest of the object is"),
        })
    };
    match object {
        IstioObject::DestinationRule(dr) => {
            let spec = &dr.spec;
            if let Some(policy) = &spec.traffic_policy {
                traffic_policy("spec.trafficPolicy", policy, &mut not_applied);
            }
            for (i, subset) in spec.subsets.iter().enumerate() {
                if let Some(policy) = &subset.traffic_policy {
                    let field = format!("spec.subsets[{i}].trafficPolicy");
                    traffic_policy(&field, policy, &mut not_applied);
                }
            }
            extra.extend(failover_without_outlier_detection(&key, spec));
        }
        IstioObject::ServiceEntry(se) => {
            let spec = &se.spec;
            if spec.resolution == se_api::Resolution::DynamicDns {
                not_applied(
                    "spec.resolution".into(),
                    "DYNAMIC_DNS (served as DNS_ROUND_ROBIN: each endpoint's name is resolved, \
                     a wildcard host is not resolved per request)",
                );
            }
            for (i, endpoint) in spec.endpoints.iter().enumerate() {
                if !endpoint.network.is_empty() {
                    not_applied(
                        format!("spec.endpoints[{i}].network"),
                        "network (multi-network meshes)",
                    );
                }
            }
        }
        IstioObject::Sidecar(sc) => {
            // The egress hosts scope what sidecars receive; ingress listeners (port,
            // defaultEndpoint, connectionPool, tls), inboundConnectionPool and the outbound
            // traffic policy apply to capture-mode sidecars (translation reports them in
            // direct mode).
            let spec = &sc.spec;
            // As istiod's inbound clusters, the workload's port decides the protocol: these
            // two are not read there.
            let pools = std::iter::once((
                "spec.inboundConnectionPool".to_string(),
                &spec.inbound_connection_pool,
            ))
            .chain(spec.ingress.iter().enumerate().map(|(i, l)| {
                (
                    format!("spec.ingress[{i}].connectionPool"),
                    &l.connection_pool,
                )
            }));
            for (at, pool) in pools {
                let Some(http) = pool.as_ref().and_then(|p| p.http.as_ref()) else {
                    continue;
                };
                if http.h2_upgrade_policy != dr::H2UpgradePolicy::Default {
                    not_applied(
                        format!("{at}.http.h2UpgradePolicy"),
                        "h2UpgradePolicy on inbound clusters (the workload's port decides the \
                         protocol, as with istiod)",
                    );
                }
                if http.use_client_protocol {
                    not_applied(
                        format!("{at}.http.useClientProtocol"),
                        "useClientProtocol on inbound clusters (the workload's port decides the \
                         protocol, as with istiod)",
                    );
                }
            }
            // An ingress listener's captureMode NONE binds it when it forwards to loopback or
            // a Unix socket, on an IP address (`bind` with it); DEFAULT and IPTABLES are what
            // capture mode does.
            for (i, ingress) in spec.ingress.iter().enumerate() {
                if bound_address(ingress).is_some() {
                    continue;
                }
                let field = |name: &str| format!("spec.ingress[{i}].{name}");
                if !ingress.bind.is_empty() {
                    not_applied(
                        field("bind"),
                        "bind (applied with captureMode NONE, to an IP address)",
                    );
                }
                if ingress.capture_mode == Some(CaptureMode::None) {
                    not_applied(
                        field("captureMode"),
                        "captureMode NONE (applied to an ingress listener whose defaultEndpoint \
                         is a loopback address or a Unix socket, bound to an IP address)",
                    );
                }
            }
            // An egress listener's captureMode DEFAULT or IPTABLES is what capture mode
            // does; NONE binds the listener when it has a port, on an IP address (`bind` with
            // it).
            for (i, egress) in spec.egress.iter().enumerate() {
                if BoundEgress::binds(egress) {
                    continue;
                }
                if !egress.bind.is_empty() {
                    not_applied(
                        format!("spec.egress[{i}].bind"),
                        "bind (applied with captureMode NONE on a port, to an IP address)",
                    );
                }
                if egress.capture_mode == Some(CaptureMode::None) {
                    not_applied(
                        format!("spec.egress[{i}].captureMode"),
                        "captureMode NONE (applied to an egress listener with a port other than \
                         HTTP_PROXY, bound to an IP address)",
                    );
                }
            }
        }
        IstioObject::AuthorizationPolicy(ap) => {
            let spec = &ap.spec;
            let by_reference = spec.target_ref.is_some() || !spec.target_refs.is_empty();
            extra.extend(target_references(
                &key,
                by_reference,
                spec.target_ref.is_some(),
            ));
            for (i, rule) in spec.rules.iter().enumerate() {
                for (j, condition) in rule.when.iter().enumerate() {
                    if condition.key.starts_with("experimental.") {
                        not_applied(
                            format!("spec.rules[{i}].when[{j}].key"),
                            "this condition (ALLOW: its rule allows nothing; DENY, AUDIT: \
                             it is left out of its rule)",
                        );
                    }
                }
            }
        }
        IstioObject::RequestAuthentication(ra) => {
            let spec = &ra.spec;
            let by_reference = spec.target_ref.is_some() || !spec.target_refs.is_empty();
            extra.extend(target_references(
                &key,
                by_reference,
                spec.target_ref.is_some(),
            ));
        }
        IstioObject::VirtualService(vs) => {
            extra.extend(crate::model::stream_routes::unapplied(&key, &vs.spec));
        }
        IstioObject::WorkloadEntry(we) if !we.spec.network.is_empty() => {
            not_applied("spec.network".into(), "network (multi-network meshes)");
        }
        IstioObject::Gateway(gw) => {
            let (_, problems) = crate::model::gateway::gateway(&key, &gw.spec);
            extra.extend(problems);
        }
        _ => {}
    }
    out.extend(extra);
    out
}

/// Locality `failover` and `failoverPriority` in a rule without `outlierDetection`: as in
/// Istio they have no effect (Envoy leaves the nearest locality only for endpoints outlier
/// detection ejects), which is said rather than left silent.
fn failover_without_outlier_detection(
    key: &ObjectKey,
    spec: &dr::DestinationRuleSpec,
) -> Vec<Problem> {
    let policies = std::iter::once((
        "spec.trafficPolicy".to_string(),
        spec.traffic_policy.as_ref(),
    ))
    .chain(spec.subsets.iter().enumerate().map(|(i, s)| {
        (
            format!("spec.subsets[{i}].trafficPolicy"),
            s.traffic_policy.as_ref(),
        )
    }))
    .filter_map(|(at, policy)| Some((at, policy?)));
    let levels: Vec<(String, &dr::TrafficPolicy)> = policies.collect();
    let detects = levels.iter().any(|(_, p)| {
        p.outlier_detection.is_some()
            || p.port_level_settings
                .iter()
                .any(|port| port.outlier_detection.is_some())
    });
    if detects {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (at, policy) in &levels {
        let lbs = std::iter::once((at.clone(), policy.load_balancer.as_ref())).chain(
            (policy.port_level_settings.iter().enumerate()).map(|(i, port)| {
                (
                    format!("{at}.portLevelSettings[{i}]"),
                    port.load_balancer.as_ref(),
                )
            }),
        );
        for (at, lb) in lbs {
            let Some(locality) = lb.and_then(|lb| lb.locality_lb_setting.as_ref()) else {
                continue;
            };
            if locality.failover.is_empty() && locality.failover_priority.is_empty() {
                continue;
            }
            out.push(Problem {
                object: key.clone(),
                field: format!("{at}.loadBalancer.localityLbSetting"),
                message: "failover and failoverPriority take effect only with outlierDetection \
                          (as in Istio): without it, requests stay in the nearest locality"
                    .into(),
            });
        }
    }
    out
}

/// The parts of a DestinationRule traffic policy capstan does not apply (the rest is, see
/// `translate/cluster/`), at the top level, per port and per subset alike.
fn traffic_policy(
    at: &str,
    policy: &dr::TrafficPolicy,
    not_applied: &mut impl FnMut(String, &str),
) {
    port_policy(
        at,
        policy.load_balancer.as_ref(),
        policy.outlier_detection.as_ref(),
        not_applied,
    );
    for (i, port) in policy.port_level_settings.iter().enumerate() {
        port_policy(
            &format!("{at}.portLevelSettings[{i}]"),
            port.load_balancer.as_ref(),
            port.outlier_detection.as_ref(),
            not_applied,
        );
    }
}

fn port_policy(
    at: &str,
    lb: Option<&dr::LoadBalancerSettings>,
    outlier: Option<&dr::OutlierDetection>,
    not_applied: &mut impl FnMut(String, &str),
) {
    if let Some(lb) = lb {
        let field = |name: &str| format!("{at}.loadBalancer.{name}");
        if lb.zone_aware_lb_setting.is_some() {
            not_applied(field("zoneAwareLbSetting"), "zoneAwareLbSetting");
        }
        let warmup = lb.warmup.is_some() || lb.warmup_duration_secs.is_some();
        let without_slow_start = lb.consistent_hash.is_some()
            || matches!(
                lb.simple,
                Some(dr::SimpleLb::Random | dr::SimpleLb::Passthrough)
            );
        if warmup && without_slow_start {
            let name = if lb.warmup.is_some() {
                "warmup"
            } else {
                "warmupDurationSecs"
            };
            not_applied(
                field(name),
                "warmup with this load balancer (Envoy ramps up endpoints under ROUND_ROBIN and \
                 LEAST_REQUEST only)",
            );
        }
    }
    if let Some(outlier) = outlier
        && outlier.consecutive_errors != 0
    {
        not_applied(
            format!("{at}.outlierDetection.consecutiveErrors"),
            "consecutiveErrors (deprecated: use consecutive5xxErrors)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_mode_none_is_warned_where_it_is_not_bound() {
        let document = capstan_crds::parse_single(
            "t.yaml",
            r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  egress:
  - port: {number: 9080, name: http, protocol: HTTP}
    captureMode: NONE
    bind: 127.0.0.2
    hosts: [./*]
  - port: {number: 8888, name: http-proxy, protocol: HTTP_PROXY}
    captureMode: NONE
    hosts: [./*]
  - port: {number: 9090, name: http-alt, protocol: HTTP}
    bind: 127.0.0.3
    captureMode: IPTABLES
    hosts: [./*]
  - port: {number: 5432, name: tcp, protocol: TCP}
    captureMode: NONE
    hosts: [./*]
  - hosts: [./*]
    captureMode: NONE
  ingress:
  - port: {number: 9080, name: http, protocol: HTTP}
    captureMode: NONE
    defaultEndpoint: 127.0.0.1:8080
  - port: {number: 9081, name: http-b, protocol: HTTP}
    captureMode: NONE
  - port: {number: 9082, name: http-c, protocol: HTTP}
    bind: 10.0.0.1
    defaultEndpoint: 127.0.0.1:8082
"#,
        )
        .expect("valid");
        let problems = fields(&document.object);
        let named: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            named,
            [
                "spec.ingress[1].captureMode",
                "spec.ingress[2].bind",
                "spec.egress[1].captureMode",
                "spec.egress[2].bind",
                "spec.egress[4].captureMode"
            ],
            "{problems:?}"
        );
    }

    fn named_fields(yaml: &str) -> Vec<(String, String)> {
        let document = capstan_crds::parse_single("t.yaml", yaml).expect("valid");
        assert!(document.validate().is_empty(), "{:?}", document.validate());
        (fields(&document.object).into_iter())
            .map(|p| (p.field, p.message))
            .collect()
    }

    #[test]
    fn inbound_protocol_settings_are_named() {
        let named = named_fields(
            r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: web}
spec:
  inboundConnectionPool: {http: {h2UpgradePolicy: UPGRADE, http1MaxPendingRequests: 10}}
  ingress:
  - port: {number: 9080, name: http, protocol: HTTP}
    defaultEndpoint: 127.0.0.1:8080
    connectionPool: {http: {useClientProtocol: true}}
"#,
        );
        let fields: Vec<&str> = named.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.inboundConnectionPool.http.h2UpgradePolicy",
                "spec.ingress[0].connectionPool.http.useClientProtocol"
            ]
        );
    }

    #[test]
    fn dynamic_dns_and_endpoint_networks_are_named() {
        let named = named_fields(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
  endpoints: [{address: api.internal, network: vpc-b}, {address: api2.internal}]
"#,
        );
        let fields: Vec<&str> = named.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["spec.endpoints[0].network"]);
        let named = named_fields(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: any, namespace: shop}
spec:
  hosts: ["*.example.com"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DYNAMIC_DNS
"#,
        );
        assert_eq!(named.len(), 1, "{named:?}");
        assert_eq!(named[0].0, "spec.resolution");
        assert!(named[0].1.contains("DNS_ROUND_ROBIN"), "{named:?}");
    }

    /// As in Istio, failover needs outlier detection somewhere in the rule; said where a
    /// rule has none.
    #[test]
    fn locality_failover_without_outlier_detection_is_named() {
        let rule = |outlier: &str| {
            format!(
                r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        failover: [{{from: us-east-1, to: us-west-2}}]
{outlier}  subsets:
  - name: v1
    labels: {{version: v1}}
    trafficPolicy:
      loadBalancer: {{localityLbSetting: {{failoverPriority: [topology.kubernetes.io/zone]}}}}
"#
            )
        };
        let named = named_fields(&rule(""));
        let fields: Vec<&str> = named.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.trafficPolicy.loadBalancer.localityLbSetting",
                "spec.subsets[0].trafficPolicy.loadBalancer.localityLbSetting"
            ]
        );
        assert!(named[0].1.contains("outlierDetection"), "{named:?}");
        let detected = named_fields(&rule("    outlierDetection: {consecutive5xxErrors: 3}\n"));
        assert_eq!(detected, vec![]);
    }

    #[test]
    fn applied_route_fields_are_not_named_and_stream_routes_say_where_they_apply() {
        let document = capstan_crds::parse_single(
            "t.yaml",
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
      headers: {request: {set: {x-a: b}}}
    retries: {attempts: 3}
    fault: {abort: {httpStatus: 503, percentage: {value: 1}}}
    mirror: {host: reviews}
    headers: {response: {remove: [x-b]}}
    corsPolicy: {allowOrigins: [{exact: "https://a.example"}]}
  - directResponse: {status: 200, body: {bytes: aGk=}}
  tcp:
  - route: [{destination: {host: reviews}}]
"#,
        )
        .expect("valid");
        let problems = fields(&document.object);
        let named: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        // The http policies and a bytes body are applied. TCP routing on sidecars depends on
        // the listener mode, and is said by `sidecar_stream_routes`.
        assert!(named.is_empty(), "{named:?}");
        let key = document.object.key();
        let stream = sidecar_stream_routes(&key, true, true, false);
        assert_eq!(stream.len(), 1);
        assert_eq!(stream[0].field, "spec.tcp");
        assert!(stream[0].message.contains("--sidecar-listeners capture"));
        assert!(sidecar_stream_routes(&key, false, true, true).is_empty());
    }

    #[test]
    fn destination_rule_policies_name_only_what_is_not_applied() {
        let document = capstan_crds::parse_single(
            "t.yaml",
            r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool: {tcp: {maxConnections: 1}}
    outlierDetection: {consecutive5xxErrors: 1}
    tls: {mode: ISTIO_MUTUAL}
    retryBudget: {percent: 10, minRetryConcurrency: 2}
    portLevelSettings:
    - port: {number: 9080}
      outlierDetection: {consecutive5xxErrors: 2, outlierDetectionHttpErrorCodes: [500]}
    - port: {number: 9081}
      loadBalancer: {consistentHash: {httpHeaderName: x-user}, warmupDurationSecs: 10s}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      tls: {mode: SIMPLE, credentialName: reviews-tls}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer:
        warmup: {duration: 30s}
        consistentHash: {httpCookie: {name: s, ttl: 0s, attributes: [{name: SameSite, value: Lax}]}}
  - name: v3
    labels: {version: v3}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 30s, minimumPercent: 5, aggression: 2}}
"#,
        )
        .expect("valid");
        let problems = fields(&document.object);
        let named: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            named,
            vec![
                "spec.trafficPolicy.portLevelSettings[1].loadBalancer.warmupDurationSecs",
                "spec.subsets[1].trafficPolicy.loadBalancer.warmup",
            ]
        );
    }
}
