//! The destinations each `Sidecar` scope sees through the VirtualServices its egress hosts
//! name (Istio infers them, so that a route a sidecar receives has its clusters), and which
//! namespaces' VirtualServices route to each host; kept across changes so that a
//! VirtualService change costs its own destinations, not a pass over every VirtualService.
//! A `Sidecar` change reads every VirtualService again; without any `Sidecar` nothing is
//! kept.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use capstan_crds::ObjectKey;

use super::{Scopes, SidecarScope, virtual_service_destinations};
use crate::model::VirtualService;
use crate::model::service::ExportTo;

/// How many VirtualServices add each host.
pub(super) type Counts = HashMap<String, usize>;

/// What one VirtualService adds.
#[derive(Debug, Default)]
struct Added {
    /// Per scope (its `Sidecar`), per reader (`None`: the proxies of any namespace; else of
    /// that namespace), the VirtualService's destinations.
    inferred: Vec<(ObjectKey, Option<String>, Vec<String>)>,
    /// Its destinations, and the namespaces it routes them for (its own and those it is
    /// exported to by name).
    routed: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Default)]
pub struct InferredDestinations {
    added: HashMap<ObjectKey, Added>,
    /// Per scope: what the proxies of any namespace see, and what only those of a namespace
    /// see (`.`, or a VirtualService exported to it alone).
    general: HashMap<ObjectKey, Counts>,
    by_namespace: HashMap<ObjectKey, HashMap<String, Counts>>,
    /// Host → the namespaces of the VirtualServices routing to it, and those they are
    /// exported to by name.
    routed_from: HashMap<String, Counts>,
}

impl InferredDestinations {
    /// Brings the readings up to date with `virtual_services`: those of `changed` are read
    /// again, or, when the scopes changed (`scopes_changed`), all of them.
    pub fn refresh(
        &mut self,
        scopes: &Scopes,
        virtual_services: &BTreeMap<ObjectKey, VirtualService>,
        changed: &BTreeSet<ObjectKey>,
        scopes_changed: bool,
    ) {
        let (in_force, _) = scopes.in_force();
        let in_force: Vec<&SidecarScope> = in_force.into_iter().map(|(_, s)| s).collect();
        // Without a scope nobody reads them: a mesh without `Sidecar`s pays nothing.
        if in_force.is_empty() {
            if scopes_changed {
                *self = Self::default();
            }
            return;
        }
        if scopes_changed {
            *self = Self::default();
            for (key, vs) in virtual_services {
                self.add(key, vs, &in_force);
            }
            return;
        }
        for key in changed {
            self.remove(key);
            if let Some(vs) = virtual_services.get(key) {
                self.add(key, vs, &in_force);
            }
        }
    }

    /// What the proxies of any namespace see through `scope`'s VirtualServices.
    pub(super) fn general(&self, scope: &ObjectKey) -> Option<&Counts> {
        self.general.get(scope)
    }

    /// What only the proxies of `namespace` see through `scope`'s VirtualServices.
    pub(super) fn own(&self, scope: &ObjectKey, namespace: &str) -> Option<&Counts> {
        self.by_namespace.get(scope)?.get(namespace)
    }

    /// The namespaces whose VirtualServices route to `host` (or are exported there by name).
    pub(super) fn routed_from(&self, host: &str) -> BTreeSet<&str> {
        (self.routed_from.get(host).into_iter())
            .flat_map(|m| m.keys().map(String::as_str))
            .collect()
    }

    fn add(&mut self, key: &ObjectKey, vs: &VirtualService, scopes: &[&SidecarScope]) {
        let destinations: Vec<String> = virtual_service_destinations(vs)
            .map(str::to_string)
            .collect();
        let mut added = Added::default();
        let vs_ns = vs.origin.namespace.as_str();
        let mut routing: Vec<String> = vec![vs_ns.to_string()];
        if let ExportTo::Namespaces(exported) = &vs.export_to {
            routing.extend(exported.iter().cloned());
        }
        for host in &destinations {
            added.routed.push((host.clone(), routing.clone()));
        }
        if vs.applies_to_sidecars() {
            for scope in scopes {
                for reader in readers(scope, vs) {
                    added
                        .inferred
                        .push((scope.origin.clone(), reader, destinations.clone()));
                }
            }
        }
        for (host, namespaces) in &added.routed {
            let counts = self.routed_from.entry(host.clone()).or_default();
            for ns in namespaces {
                *counts.entry(ns.clone()).or_default() += 1;
            }
        }
        for (scope, reader, hosts) in &added.inferred {
            let counts = match reader {
                None => self.general.entry(scope.clone()).or_default(),
                Some(ns) => (self.by_namespace.entry(scope.clone()).or_default())
                    .entry(ns.clone())
                    .or_default(),
            };
            for host in hosts {
                *counts.entry(host.clone()).or_default() += 1;
            }
        }
        self.added.insert(key.clone(), added);
    }

    fn remove(&mut self, key: &ObjectKey) {
        let Some(added) = self.added.remove(key) else {
            return;
        };
        for (host, namespaces) in added.routed {
            if let Some(counts) = self.routed_from.get_mut(&host) {
                for ns in namespaces {
                    decrement(counts, &ns);
                }
                if counts.is_empty() {
                    self.routed_from.remove(&host);
                }
            }
        }
        for (scope, reader, hosts) in added.inferred {
            match reader {
                None => {
                    if let Some(counts) = self.general.get_mut(&scope) {
                        hosts.iter().for_each(|h| decrement(counts, h));
                        if counts.is_empty() {
                            self.general.remove(&scope);
                        }
                    }
                }
                Some(ns) => {
                    if let Some(by_ns) = self.by_namespace.get_mut(&scope) {
                        if let Some(counts) = by_ns.get_mut(&ns) {
                            hosts.iter().for_each(|h| decrement(counts, h));
                            if counts.is_empty() {
                                by_ns.remove(&ns);
                            }
                        }
                        if by_ns.is_empty() {
                            self.by_namespace.remove(&scope);
                        }
                    }
                }
            }
        }
    }
}

fn decrement(counts: &mut Counts, key: &str) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// Which proxies see `vs`'s destinations through `scope`: those of any namespace (`None`)
/// when an egress host names one of its hosts as any namespace reads it; those of its own
/// namespace when only `.` names it there; and, for a VirtualService exported by name, each
/// namespace it is exported to that the above allows.
fn readers(scope: &SidecarScope, vs: &VirtualService) -> Vec<Option<String>> {
    let vs_ns = vs.origin.namespace.as_str();
    let anywhere = vs.hosts.iter().any(|h| scope.names(false, vs_ns, h));
    let at_home = anywhere || vs.hosts.iter().any(|h| scope.names(true, vs_ns, h));
    match &vs.export_to {
        ExportTo::All if anywhere => vec![None],
        ExportTo::All if at_home => vec![Some(vs_ns.to_string())],
        ExportTo::All => Vec::new(),
        ExportTo::Namespaces(exported) => exported
            .iter()
            .filter(|ns| anywhere || (at_home && *ns == vs_ns))
            .map(|ns| Some(ns.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use crate::index::{Event, Index, RecordKey, istio_event as istio};
    use crate::model::Mesh;
    use crate::model::sidecar_scope::fixtures::{service_entry, sidecar};

    const FRONT: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: web}
spec:
  hosts: [front.web.svc.cluster.local]
  http: [{route: [{destination: {host: cart.shop.svc.cluster.local}}]}]
";

    /// A VirtualService's readings come and go with it: once it is gone (or changed), none
    /// of what it added is left behind.
    #[test]
    fn a_virtual_service_takes_what_it_added_with_it() {
        let mut index = Index::new();
        let mut mesh = Mesh::new("cluster.local");
        let mut apply = |event: Event, mesh: &mut Mesh| {
            let changes = index.handle(event);
            mesh.update(&index, &changes.objects);
        };
        apply(istio(&service_entry("cart", "shop")), &mut mesh);
        apply(istio(&service_entry("front", "web")), &mut mesh);
        apply(
            istio(&sidecar("default", "web", None, "[\"./*\"]")),
            &mut mesh,
        );
        apply(istio(FRONT), &mut mesh);
        let scope = capstan_crds::ObjectKey {
            kind: capstan_crds::Kind::Sidecar,
            namespace: "web".into(),
            name: "default".into(),
        };
        let inferred = &mesh.inferred_destinations;
        let seen = |m: &Mesh, host: &str| {
            let i = &m.inferred_destinations;
            i.general(&scope).is_some_and(|c| c.contains_key(host))
                || i.own(&scope, "web").is_some_and(|c| c.contains_key(host))
        };
        assert!(seen(&mesh, "cart.shop.svc.cluster.local"));
        assert_eq!(
            inferred.routed_from("cart.shop.svc.cluster.local"),
            ["web"].into()
        );
        apply(istio(&FRONT.replace("cart.shop", "basket.shop")), &mut mesh);
        assert!(!seen(&mesh, "cart.shop.svc.cluster.local"));
        assert!(seen(&mesh, "basket.shop.svc.cluster.local"));
        apply(
            Event::Delete(RecordKey::Istio(capstan_crds::ObjectKey {
                kind: capstan_crds::Kind::VirtualService,
                namespace: "web".into(),
                name: "front".into(),
            })),
            &mut mesh,
        );
        let i = &mesh.inferred_destinations;
        assert!(i.added.is_empty() && i.general.is_empty() && i.by_namespace.is_empty());
        assert!(i.routed_from.is_empty());
    }
}
