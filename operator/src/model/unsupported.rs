//! Config capstan accepts but does not act on yet, named field by field, so that `run` warns
//! and the object's status says so instead of the config being ignored silently.

use capstan_crds::{IstioObject, Kind};

use crate::model::Problem;

/// The kinds whose objects capstan translates (partly, see [`fields`]).
pub fn kind_is_translated(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::ServiceEntry | Kind::DestinationRule | Kind::VirtualService
    )
}

/// What `validate`, `run` and the status condition say about an object of a kind capstan
/// does not translate.
pub fn kind_message(kind: Kind) -> String {
    format!("capstan validates {kind} but does not apply it to proxies yet")
}

/// The fields of `object` that are set and not honoured. Kinds capstan does not translate at
/// all are reported by the caller, once for the whole object.
pub fn fields(object: &IstioObject) -> Vec<Problem> {
    let key = object.key();
    let mut out = Vec::new();
    let mut not_applied = |field: String, what: &str| {
        out.push(Problem {
            object: key.clone(),
            field,
            message: format!("{what} is not applied yet; the rest of the object is"),
        })
    };
    match object {
        IstioObject::ServiceEntry(se) => {
            let spec = &se.spec;
            if !spec.addresses.is_empty() {
                not_applied("spec.addresses".into(), "addresses");
            }
            if spec.workload_selector.is_some() {
                not_applied("spec.workloadSelector".into(), "workloadSelector");
            }
            if !spec.export_to.is_empty() {
                not_applied("spec.exportTo".into(), "exportTo (visible everywhere)");
            }
        }
        IstioObject::DestinationRule(dr) => {
            let spec = &dr.spec;
            if spec.traffic_policy.is_some() {
                not_applied("spec.trafficPolicy".into(), "trafficPolicy");
            }
            for (i, subset) in spec.subsets.iter().enumerate() {
                if subset.traffic_policy.is_some() {
                    not_applied(format!("spec.subsets[{i}].trafficPolicy"), "trafficPolicy");
                }
            }
            if !spec.export_to.is_empty() {
                not_applied("spec.exportTo".into(), "exportTo (visible everywhere)");
            }
            if spec.workload_selector.is_some() {
                not_applied("spec.workloadSelector".into(), "workloadSelector");
            }
        }
        IstioObject::VirtualService(vs) => {
            let spec = &vs.spec;
            if !spec.tls.is_empty() {
                not_applied("spec.tls".into(), "TLS routing");
            }
            if !spec.tcp.is_empty() {
                not_applied("spec.tcp".into(), "TCP routing");
            }
            if !spec.export_to.is_empty() {
                not_applied("spec.exportTo".into(), "exportTo (visible everywhere)");
            }
            for (i, http) in spec.http.iter().enumerate() {
                let field = |name: &str| format!("spec.http[{i}].{name}");
                if http.retries.is_some() {
                    not_applied(field("retries"), "retries");
                }
                if http.fault.is_some() {
                    not_applied(field("fault"), "fault injection");
                }
                if http.mirror.is_some() || !http.mirrors.is_empty() {
                    not_applied(field("mirror"), "mirroring");
                }
                if http.cors_policy.is_some() {
                    not_applied(field("corsPolicy"), "corsPolicy");
                }
                if http.headers.is_some() {
                    not_applied(field("headers"), "header manipulation");
                }
                for (j, route) in http.route.iter().enumerate() {
                    if route.headers.is_some() {
                        not_applied(field(&format!("route[{j}].headers")), "header manipulation");
                    }
                }
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_but_unhonoured_fields_are_named() {
        let document = capstan_crds::parse_single(
            "t.yaml",
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    retries: {attempts: 3}
  - route: [{destination: {host: reviews}}]
"#,
        )
        .expect("valid");
        let problems = fields(&document.object);
        let named: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(named, vec!["spec.http[0].retries"]);
        assert!(problems[0].message.contains("not applied"));
    }
}
