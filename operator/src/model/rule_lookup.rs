//! Which DestinationRule applies to a service host: the first (by namespace and name) naming
//! the host, else — as Istio's most specific host match — the first claiming the longest
//! wildcard host that covers it (`*.bookinfo.svc.cluster.local` before `*.local` before `*`).
//! Rules naming one host that lose are reported on that host; those of a wildcard host,
//! once, when the wildcard host itself is refreshed.

use capstan_crds::{IstioObject, ObjectKey};

use super::{DestinationRule, Mesh, Problem, Subset, Topic, hostname, service, traffic_policy};
use crate::index::Index;

impl Mesh {
    /// Decides which DestinationRule applies to `host` now; the losers are reported.
    pub(super) fn refresh_rule(&mut self, index: &Index, host: &str) {
        let rules: Vec<ObjectKey> = self
            .rule_claimants
            .get(host)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let topic = Topic::Host(host.to_string());
        for key in &rules {
            if let Some(topics) = self.problems.get_mut(key) {
                topics.remove(&topic);
            }
        }
        let inherited = rules.is_empty();
        let rules: Vec<ObjectKey> = match self.wildcard_rule_for(host).filter(|_| inherited) {
            Some(pattern) => self
                .rule_claimants
                .get(pattern)
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
            None => rules,
        };
        let mut rule: Option<DestinationRule> = None;
        for key in &rules {
            let Some(IstioObject::DestinationRule(dr)) =
                index.istio(key).and_then(|r| r.object.as_deref())
            else {
                continue;
            };
            match &rule {
                None => {
                    rule = Some(DestinationRule {
                        host: host.to_string(),
                        origin: key.clone(),
                        subsets: dr
                            .spec
                            .subsets
                            .iter()
                            .map(|s| Subset {
                                name: s.name.clone(),
                                labels: s.labels.clone(),
                            })
                            .collect(),
                        traffic_policy: traffic_policy::Policies::from_api(&dr.spec)
                            .map(std::sync::Arc::new),
                        export_to: service::ExportTo::parse(&dr.spec.export_to, &key.namespace),
                    })
                }
                Some(_) if inherited => {}
                Some(existing) => {
                    let problem = Problem {
                        object: key.clone(),
                        field: "spec.host".into(),
                        message: format!(
                            "host {host} already has {}; this rule is ignored",
                            existing.origin
                        ),
                    };
                    self.report(key, topic.clone(), problem);
                }
            }
        }
        match rule {
            Some(rule) => self.destination_rules.insert(host.to_string(), rule),
            None => self.destination_rules.remove(host),
        };
    }

    /// The services the wildcard DestinationRule host `pattern` covers (not itself: a
    /// ServiceEntry may have that very host, and a rule naming it is its own).
    pub(super) fn covered_by_rule<'a>(
        &'a self,
        pattern: &'a str,
    ) -> impl Iterator<Item = String> + 'a {
        self.services
            .keys()
            .filter(move |h| *h != pattern && hostname::matches(pattern, h))
            .cloned()
    }

    /// The most specific wildcard DestinationRule host covering `host`, as Istio picks it:
    /// the longest.
    fn wildcard_rule_for(&self, host: &str) -> Option<&String> {
        self.wildcard_rules
            .iter()
            .filter(|p| *p != host && hostname::matches(p, host))
            .max_by_key(|p| p.len())
    }
}

#[cfg(test)]
mod tests {
    use capstan_crds::Kind;

    use super::*;
    use crate::index::{Event, RecordKey, istio_event as istio};
    use crate::translate::test_support::destination_rule;

    fn entry(host: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {}, namespace: bookinfo}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.1}}]
",
            host.replace(['.', '*'], "-").trim_matches('-')
        )
    }

    fn rule(namespace: &str, name: &str, host: &str) -> String {
        let subsets = format!("  subsets: [{{name: {name}, labels: {{rule: {name}}}}}]\n");
        destination_rule(namespace, name, host, &subsets)
    }

    /// Which rule (namespace/name) applies to each host, after `events` one by one.
    fn applied(events: Vec<Event>, hosts: &[&str]) -> (Vec<String>, Vec<String>) {
        let mut index = Index::new();
        let mut mesh = Mesh::new("cluster.local");
        for event in events {
            let changes = index.handle(event);
            mesh.update(&index, &changes.objects);
        }
        let rules = hosts
            .iter()
            .map(|h| {
                mesh.destination_rules
                    .get(*h)
                    .map_or("none".to_string(), |r| r.origin.to_string())
            })
            .collect();
        let problems = mesh.problems().map(|p| p.to_string()).collect();
        (rules, problems)
    }

    const REVIEWS: &str = "reviews.bookinfo.svc.cluster.local";
    const RATINGS: &str = "ratings.shop.svc.cluster.local";
    const EXTERNAL: &str = "api.example.com";

    #[test]
    fn a_host_no_rule_names_takes_the_most_specific_wildcard_rule() {
        let services = || [REVIEWS, RATINGS, EXTERNAL].map(|h| istio(&entry(h)));
        let mut events: Vec<Event> = services().into();
        events.extend([
            istio(&rule("istio-system", "mesh", "*.local")),
            istio(&rule(
                "bookinfo",
                "bookinfo",
                "*.bookinfo.svc.cluster.local",
            )),
            istio(&rule("istio-system", "everything", "*")),
        ]);
        let (rules, problems) = applied(events, &[REVIEWS, RATINGS, EXTERNAL]);
        assert_eq!(
            rules,
            [
                "DestinationRule bookinfo/bookinfo",
                "DestinationRule istio-system/mesh",
                "DestinationRule istio-system/everything"
            ]
        );
        assert!(problems.is_empty(), "{problems:?}");

        // A rule naming the host wins; a second one for the same wildcard is reported once;
        // a service added later, and a rule deleted, are followed.
        let (rules, problems) = applied(
            vec![
                istio(&rule("istio-system", "mesh", "*.local")),
                istio(&rule("istio-system", "zz-mesh", "*.local")),
                istio(&entry(REVIEWS)),
                istio(&rule("bookinfo", "reviews", REVIEWS)),
                istio(&entry(RATINGS)),
                Event::Delete(RecordKey::Istio(ObjectKey {
                    kind: Kind::DestinationRule,
                    namespace: "bookinfo".into(),
                    name: "reviews".into(),
                })),
                istio(&rule("bookinfo", "reviews-again", REVIEWS)),
            ],
            &[REVIEWS, RATINGS],
        );
        assert_eq!(
            rules,
            [
                "DestinationRule bookinfo/reviews-again",
                "DestinationRule istio-system/mesh"
            ]
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("istio-system/zz-mesh") && problems[0].contains("*.local"),
            "{problems:?}"
        );

        let (rules, _) = applied(
            vec![
                istio(&entry(RATINGS)),
                istio(&rule("istio-system", "mesh", "*.local")),
                Event::Delete(RecordKey::Istio(ObjectKey {
                    kind: Kind::DestinationRule,
                    namespace: "istio-system".into(),
                    name: "mesh".into(),
                })),
            ],
            &[RATINGS],
        );
        assert_eq!(rules, ["none"]);
    }
}
