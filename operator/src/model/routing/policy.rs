//! The policies of a VirtualService HTTP route besides where it sends requests — retries,
//! fault injection, mirroring, header operations, CORS — in capstan's own types, read once
//! from the API structs. Durations are parsed and percentages fixed here as istiod reads
//! them, so translation only maps them onto Envoy.

use std::collections::BTreeMap;
use std::time::Duration;

use capstan_crds::ObjectKey;
use capstan_crds::networking::common::{Percent, parse_duration};
use capstan_crds::networking::http_policy as api_policy;
use capstan_crds::networking::virtual_service as api;

use super::{StringMatch, string_match};
use crate::model::{Problem, hostname};

/// A route's retries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Retries {
    /// No `retries` on the route: Istio's default policy.
    #[default]
    Default,
    /// `attempts: 0`: no retries at all.
    Disabled,
    Policy(RetryPolicy),
}

/// A `retries` block with `attempts` above 0. Fields left out keep Istio's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    /// As written: Envoy conditions and HTTP status codes, comma-separated.
    pub retry_on: Option<String>,
    pub retry_remote_localities: bool,
    /// `None`: as by default (other hosts preferred).
    pub retry_ignore_previous_hosts: Option<bool>,
    /// The base interval of Envoy's exponential back-off.
    pub backoff: Option<Duration>,
}

/// A share of requests, as Istio gives it to Envoy: `percentage` (a double) in millionths,
/// the deprecated integer `percent` in hundredths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fraction {
    PerHundred(u32),
    PerMillion(u32),
}

impl Fraction {
    pub const ALL: Fraction = Fraction::PerHundred(100);

    /// `percentage.value` (0..=100, fractions allowed); truncated to millionths as istiod
    /// does.
    pub fn of_percentage(p: &Percent) -> Self {
        // `as` saturates: a negative or NaN value (rejected by validation) becomes 0.
        Fraction::PerMillion((p.value * 10_000.0) as u32)
    }

    pub fn is_zero(self) -> bool {
        matches!(self, Fraction::PerHundred(0) | Fraction::PerMillion(0))
    }
}

/// Fault injection; at least one of the two is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultDelay {
    pub fixed: Duration,
    pub percentage: Fraction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultAbort {
    pub error: AbortError,
    /// `None`: left to Envoy, as istiod leaves it.
    pub percentage: Option<Fraction>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortError {
    HttpStatus(u32),
    /// The gRPC status code.
    GrpcStatus(u32),
}

/// A copy of each request (selected by `percentage`) is sent to this destination too, and
/// its response ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// Fully qualified.
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u32>,
    pub percentage: Fraction,
}

/// Header operations on requests and responses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

impl Headers {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

/// Names as written; `set` replaces, `add` appends, `remove` removes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOps {
    pub set: BTreeMap<String, String>,
    pub add: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cors {
    /// `allowOrigins`, or else the deprecated exact `allowOrigin`.
    pub allow_origins: Vec<StringMatch>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age: Option<Duration>,
    pub allow_credentials: Option<bool>,
    /// `unmatchedPreflights: IGNORE`: answer preflights from origins not allowed instead of
    /// forwarding them (Istio's default forwards).
    pub ignore_unmatched_preflights: bool,
}

/// Reads the policies of one route, collecting what cannot be honoured.
pub(super) struct PolicyReader<'a> {
    pub key: &'a ObjectKey,
    /// `spec.http[i]`.
    pub field: String,
    pub problems: &'a mut Vec<Problem>,
}

impl PolicyReader<'_> {
    fn problem(&mut self, field: &str, message: String) {
        self.problems.push(Problem {
            object: self.key.clone(),
            field: format!("{}.{field}", self.field),
            message,
        });
    }

    /// A duration validation rejects only reaches here unvalidated; it is reported and
    /// treated as not set.
    fn duration(&mut self, field: &str, text: Option<&String>) -> Option<Duration> {
        let text = text?;
        let parsed = parse_duration(text);
        if parsed.is_none() {
            self.problem(field, format!("{text:?} is not a duration; ignored"));
        }
        parsed
    }

    pub fn retries(&mut self, r: Option<&api_policy::HttpRetry>) -> Retries {
        let Some(r) = r else {
            return Retries::Default;
        };
        if r.attempts <= 0 {
            return Retries::Disabled;
        }
        Retries::Policy(RetryPolicy {
            attempts: r.attempts.unsigned_abs(),
            per_try_timeout: self.duration("retries.perTryTimeout", r.per_try_timeout.as_ref()),
            retry_on: (!r.retry_on.is_empty()).then(|| r.retry_on.clone()),
            retry_remote_localities: r.retry_remote_localities == Some(true),
            retry_ignore_previous_hosts: r.retry_ignore_previous_hosts,
            backoff: self.duration("retries.backoff", r.backoff.as_ref()),
        })
    }

    /// `None` when nothing in the block can be applied (as istiod drops it).
    pub fn fault(&mut self, f: Option<&api_policy::HttpFaultInjection>) -> Option<Fault> {
        let f = f?;
        let delay = f.delay.as_ref().and_then(|d| self.delay(d));
        let abort = f.abort.as_ref().and_then(|a| self.abort(a));
        (delay.is_some() || abort.is_some()).then_some(Fault { delay, abort })
    }

    fn delay(&mut self, d: &api_policy::FaultDelay) -> Option<FaultDelay> {
        let percentage = match &d.percentage {
            Some(p) => Fraction::of_percentage(p),
            None => Fraction::PerHundred(d.percent.clamp(0, 100).unsigned_abs()),
        };
        if d.fixed_delay.is_none() {
            if d.exponential_delay.is_some() {
                self.problem(
                    "fault.delay.exponentialDelay",
                    "exponentialDelay is not supported (nor by istiod); no delay is injected"
                        .into(),
                );
            }
            return None;
        }
        let fixed = self.duration("fault.delay.fixedDelay", d.fixed_delay.as_ref())?;
        Some(FaultDelay { fixed, percentage })
    }

    fn abort(&mut self, a: &api_policy::FaultAbort) -> Option<FaultAbort> {
        let error = if let Some(status) = a.http_status {
            AbortError::HttpStatus(u32::try_from(status).unwrap_or(0))
        } else if let Some(name) = &a.grpc_status {
            let Some(code) = grpc_code(name) else {
                self.problem(
                    "fault.abort.grpcStatus",
                    format!("{name:?} is not a gRPC status name; no abort is injected"),
                );
                return None;
            };
            AbortError::GrpcStatus(code)
        } else {
            if a.http2_error.is_some() {
                self.problem(
                    "fault.abort.http2Error",
                    "http2Error is not supported (nor by istiod); no abort is injected".into(),
                );
            }
            return None;
        };
        Some(FaultAbort {
            error,
            percentage: a.percentage.as_ref().map(Fraction::of_percentage),
        })
    }

    /// `mirror` (with `mirrorPercentage`, else `mirrorPercent`, else 100%) then `mirrors`;
    /// a mirror at 0% is left out, as istiod does.
    pub fn mirrors(
        &mut self,
        route: &api::HttpRoute,
        namespace: &str,
        domain_suffix: &str,
    ) -> Vec<Mirror> {
        let mut out = Vec::new();
        let mut push = |d: &api::Destination, percentage: Fraction| {
            if !percentage.is_zero() {
                out.push(Mirror {
                    host: hostname::resolve(&d.host, namespace, domain_suffix),
                    subset: (!d.subset.is_empty()).then(|| d.subset.clone()),
                    port: d.port.as_ref().map(|p| p.number),
                    percentage,
                });
            }
        };
        if let Some(d) = &route.mirror {
            let percentage = match (&route.mirror_percentage, route.mirror_percent) {
                (Some(p), _) => Fraction::of_percentage(p),
                (None, Some(p)) => Fraction::PerHundred(p.min(100)),
                (None, None) => Fraction::ALL,
            };
            push(d, percentage);
        }
        for m in &route.mirrors {
            let percentage = m
                .percentage
                .as_ref()
                .map_or(Fraction::ALL, Fraction::of_percentage);
            push(&m.destination, percentage);
        }
        out
    }

    pub fn cors(&mut self, c: Option<&api_policy::CorsPolicy>) -> Option<Cors> {
        let c = c?;
        let allow_origins = if !c.allow_origins.is_empty() {
            c.allow_origins.iter().filter_map(string_match).collect()
        } else {
            c.allow_origin
                .iter()
                .map(|o| StringMatch::Exact(o.clone()))
                .collect()
        };
        Some(Cors {
            allow_origins,
            allow_methods: c.allow_methods.clone(),
            allow_headers: c.allow_headers.clone(),
            expose_headers: c.expose_headers.clone(),
            max_age: self.duration("corsPolicy.maxAge", c.max_age.as_ref()),
            allow_credentials: c.allow_credentials,
            ignore_unmatched_preflights: c.unmatched_preflights
                == api_policy::UnmatchedPreflights::Ignore,
        })
    }
}

pub(super) fn headers(h: Option<&api::Headers>) -> Headers {
    let ops = |o: Option<&api::HeaderOperations>| {
        o.map(|o| HeaderOps {
            set: o.set.clone(),
            add: o.add.clone(),
            remove: o.remove.clone(),
        })
        .unwrap_or_default()
    };
    match h {
        Some(h) => Headers {
            request: ops(h.request.as_ref()),
            response: ops(h.response.as_ref()),
        },
        None => Headers::default(),
    }
}

/// gRPC status codes by the names Istio accepts.
fn grpc_code(name: &str) -> Option<u32> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    let code = CODES.iter().position(|c| *c == name)?;
    u32::try_from(code).ok()
}
