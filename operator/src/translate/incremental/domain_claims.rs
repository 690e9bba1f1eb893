//! Which virtual-host domains more than one virtual host claims within one route variant:
//! Envoy rejects a route configuration with a domain twice.
//!
//! A domain of the `other` form is in every variant; a domain only the `own` form has (a
//! cluster-local host's short name) is only in its namespace's variant, so the same short
//! name in two namespaces is no conflict.

use std::collections::HashMap;

use super::Group;

#[derive(Debug, Default)]
struct Claims {
    /// By virtual hosts whose every variant has the domain.
    everywhere: u32,
    /// By virtual hosts of each group whose own variant only has it.
    in_group: HashMap<Group, u32>,
}

impl Claims {
    fn repeated(&self) -> bool {
        self.everywhere >= 2
            || (self.everywhere >= 1 && !self.in_group.is_empty())
            || self.in_group.values().any(|n| *n >= 2)
    }

    fn is_empty(&self) -> bool {
        self.everywhere == 0 && self.in_group.is_empty()
    }
}

#[derive(Debug, Default)]
pub(super) struct DomainClaims {
    claims: HashMap<String, Claims>,
    /// How many domains are claimed twice in some variant.
    repeated: usize,
}

impl DomainClaims {
    /// Whether some variant would have a domain twice.
    pub(super) fn any_repeated(&self) -> bool {
        self.repeated > 0
    }

    /// Records a claim on `domain`: in every variant (`group` `None`), or only in the
    /// variant of `group`'s namespace.
    pub(super) fn claim(&mut self, domain: &str, group: Option<&Group>) {
        self.change(domain, |claims| match group {
            None => claims.everywhere += 1,
            Some(g) => *claims.in_group.entry(g.clone()).or_default() += 1,
        });
    }

    /// Undoes one [`Self::claim`] with the same arguments.
    pub(super) fn release(&mut self, domain: &str, group: Option<&Group>) {
        self.change(domain, |claims| match group {
            None => claims.everywhere = claims.everywhere.saturating_sub(1),
            Some(g) => {
                if let Some(n) = claims.in_group.get_mut(g) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        claims.in_group.remove(g);
                    }
                }
            }
        });
    }

    fn change(&mut self, domain: &str, f: impl FnOnce(&mut Claims)) {
        let claims = self.claims.entry(domain.to_string()).or_default();
        let before = claims.repeated();
        f(claims);
        let after = claims.repeated();
        if claims.is_empty() {
            self.claims.remove(domain);
        }
        match (before, after) {
            (false, true) => self.repeated += 1,
            (true, false) => self.repeated -= 1,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Translator;
    use super::super::tests::{assert_routes_decode_as_route_configurations, istio, options};
    use super::*;
    use crate::index::Index;
    use crate::model::Mesh;

    /// The same service name in two namespaces keeps the fast assembly, which builds what
    /// the one-piece generator does (it drops a name claimed twice in one variant).
    #[test]
    fn same_named_services_in_two_namespaces_are_assembled_from_parts() {
        let mut index = Index::new();
        for namespace in ["shop", "web"] {
            index.handle(istio(&format!(
                "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: {namespace}}}
spec:
  hosts: [api.{namespace}.svc.cluster.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.1}}]
"
            )));
        }
        let (mesh, _) = Mesh::build(&index, "cluster.local");
        let mut translator = Translator::new(options());
        translator.full(&mesh);
        assert!(!translator.domain_claims.any_repeated());
        assert_routes_decode_as_route_configurations(&mesh);
    }

    #[test]
    fn the_same_short_name_in_two_namespaces_is_no_conflict() {
        let shop: Group = Some("shop".into());
        let web: Group = Some("web".into());
        let mut claims = DomainClaims::default();
        claims.claim("api", Some(&shop));
        claims.claim("api", Some(&web));
        assert!(!claims.any_repeated());
        // Twice in one namespace's variant, or once there and once in every variant: both
        // would put it twice in a route configuration.
        claims.claim("api", Some(&shop));
        assert!(claims.any_repeated());
        claims.release("api", Some(&shop));
        assert!(!claims.any_repeated());
        claims.claim("api", None);
        assert!(claims.any_repeated());
        claims.release("api", None);
        claims.claim("api.example.com", None);
        claims.claim("api.example.com", None);
        assert!(claims.any_repeated());
        claims.release("api.example.com", None);
        claims.release("api", Some(&shop));
        claims.release("api", Some(&web));
        assert!(!claims.any_repeated());
        assert!(claims.claims.len() == 1, "released domains are forgotten");
    }
}
