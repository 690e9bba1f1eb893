//! Which virtual-host domains more than one virtual host claims within one route variant:
//! Envoy rejects a route configuration with a domain twice.
//!
//! A domain of the `other` form is in every variant of its route configuration; a domain
//! only the `own` form has (a cluster-local host's short name) is only in its namespace's
//! variant, so the same short name in two namespaces is no conflict. Nor is one name in two
//! route configurations (two ports).

use std::collections::HashMap;

use super::Group;
use crate::translate::route::RouteName;

#[derive(Debug, Default)]
struct Claims {
    /// By virtual hosts whose every variant has the domain.
    everywhere: u32,
    /// By virtual hosts of each namespace whose own variant only has it.
    in_group: HashMap<Option<String>, u32>,
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
    /// By route configuration and domain.
    claims: HashMap<(RouteName, String), Claims>,
    /// How many domains are claimed twice in some variant.
    repeated: usize,
}

impl DomainClaims {
    /// Whether some variant would have a domain twice.
    pub(super) fn any_repeated(&self) -> bool {
        self.repeated > 0
    }

    /// Records a claim on `domain` by a virtual host of `group`: in every variant of its
    /// route configuration, or only in the variant of its namespace (`own_only`).
    pub(super) fn claim(&mut self, domain: &str, group: &Group, own_only: bool) {
        self.change(domain, group, |claims| match own_only {
            false => claims.everywhere += 1,
            true => *claims.in_group.entry(group.namespace.clone()).or_default() += 1,
        });
    }

    /// Undoes one [`Self::claim`] with the same arguments.
    pub(super) fn release(&mut self, domain: &str, group: &Group, own_only: bool) {
        self.change(domain, group, |claims| match own_only {
            false => claims.everywhere = claims.everywhere.saturating_sub(1),
            true => {
                if let Some(n) = claims.in_group.get_mut(&group.namespace) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        claims.in_group.remove(&group.namespace);
                    }
                }
            }
        });
    }

    fn change(&mut self, domain: &str, group: &Group, f: impl FnOnce(&mut Claims)) {
        let claims = (self.claims)
            .entry((group.route, domain.to_string()))
            .or_default();
        let before = claims.repeated();
        f(claims);
        let after = claims.repeated();
        if claims.is_empty() {
            self.claims.remove(&(group.route, domain.to_string()));
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

    fn group(port: u32, namespace: Option<&str>) -> Group {
        Group {
            route: RouteName::Port(port),
            namespace: namespace.map(str::to_string),
        }
    }

    #[test]
    fn the_same_short_name_in_two_namespaces_is_no_conflict() {
        let shop = group(80, Some("shop"));
        let web = group(80, Some("web"));
        let mut claims = DomainClaims::default();
        claims.claim("api", &shop, true);
        claims.claim("api", &web, true);
        assert!(!claims.any_repeated());
        // Twice in one namespace's variant, or once there and once in every variant: both
        // would put it twice in a route configuration.
        claims.claim("api", &shop, true);
        assert!(claims.any_repeated());
        claims.release("api", &shop, true);
        assert!(!claims.any_repeated());
        claims.claim("api", &web, false);
        assert!(claims.any_repeated());
        claims.release("api", &web, false);
        claims.claim("api.example.com", &group(80, None), false);
        claims.claim("api.example.com", &group(80, None), false);
        assert!(claims.any_repeated());
        claims.release("api.example.com", &group(80, None), false);
        claims.release("api", &shop, true);
        claims.release("api", &web, true);
        assert!(!claims.any_repeated());
        assert!(claims.claims.len() == 1, "released domains are forgotten");
    }

    #[test]
    fn one_name_in_two_route_configurations_is_no_conflict() {
        let mut claims = DomainClaims::default();
        claims.claim("api.example.com", &group(80, None), false);
        claims.claim("api.example.com", &group(8080, None), false);
        assert!(!claims.any_repeated());
        claims.claim("api.example.com", &group(8080, None), false);
        assert!(claims.any_repeated());
    }
}
