//! Listeners `Sidecar`s bind to sockets of their own (`captureMode: NONE`), for workloads
//! without an iptables capture: egress listeners on HTTP ports, routed through the port's
//! route configuration, and on TLS and TCP ports, to their services there
//! ([`super::super::bound_streams`]); and ingress listeners, with the port's `virtualInbound`
//! chains. Each
//! is served to the sets of sidecars whose scope in force has it: a variant per set, and a
//! visibility rule per set hiding it from the others.

use std::collections::{BTreeMap, BTreeSet};

use capstan_xds::{Selector, Update, Visibility, type_url};
use envoy_types::pb::envoy::config::listener::v3::Listener;

use super::super::{bound_streams, ingress, outbound};
use super::{CaptureState, put, sidecars};
use crate::model::sidecar_scope::{
    BoundEgress, BoundEgressVariants, Carries, Covers, IngressPort, IngressVariants, PerScope,
};
use crate::model::{Mesh, Problem};

/// Per listener name, the sets of sidecars a variant of it was put for.
pub(super) type PutFor = BTreeMap<String, BTreeSet<Selector>>;

impl CaptureState {
    /// Puts the bound egress listeners of `variants` (a `Sidecar` changed); removes those no
    /// scope binds any more.
    pub fn set_bound_egress(
        &mut self,
        mesh: &Mesh,
        variants: &BoundEgressVariants,
        update: &mut Update,
    ) {
        if self.bound_egress == *variants {
            return;
        }
        self.bound_egress = variants.clone();
        self.put_bound_egress(mesh, update);
    }

    /// Rebuilds the bound egress listeners if some carry TLS or TCP on `port`, whose
    /// services or routes changed.
    pub(super) fn rebuild_bound_egress_on(&mut self, mesh: &Mesh, port: u32, update: &mut Update) {
        let carries_streams = self
            .all_bound_egress()
            .any(|b| b.port == port && matches!(b.carries, Carries::Streams(_)));
        if carries_streams {
            self.put_bound_egress(mesh, update);
        }
    }

    fn put_bound_egress(&mut self, mesh: &Mesh, update: &mut Update) {
        let mut problems = Vec::new();
        let variants = &self.bound_egress;
        let by_namespace = own_namespace_variants(mesh, &variants.everyone);
        let now = PerScope {
            everyone: egress_listeners(mesh, &variants.everyone, &mut problems),
            scoped: (variants.scoped.iter().chain(&by_namespace))
                .map(|(selector, bound)| {
                    let listeners = egress_listeners(mesh, bound, &mut problems);
                    (selector.clone(), listeners)
                })
                .collect(),
        };
        self.bound_egress_put = put_bound(&self.bound_egress_put, &now, update);
        problems.sort_by(|a, b| {
            (&a.object, &a.field, &a.message).cmp(&(&b.object, &b.field, &b.message))
        });
        problems.dedup();
        self.bound_problems = problems;
    }

    fn all_bound_egress(&self) -> impl Iterator<Item = &BoundEgress> {
        (self.bound_egress.everyone.iter())
            .chain(self.bound_egress.scoped.iter().flat_map(|(_, bound)| bound))
    }

    /// The ports some sidecars have a bound HTTP egress listener on: each needs its route
    /// configuration, with services on it or not.
    pub fn bound_ports(&self) -> impl Iterator<Item = u32> + '_ {
        self.all_bound_egress()
            .filter(|b| b.carries == Carries::Http)
            .map(|b| b.port)
    }

    /// Puts the ingress listeners of `variants` bound to sockets of their own.
    pub(super) fn set_bound_ingress(&mut self, variants: &IngressVariants, update: &mut Update) {
        let listeners = |ports: &Vec<IngressPort>| {
            ports
                .iter()
                .filter_map(|port| {
                    let address = port.bound.as_deref()?;
                    let listener = ingress::bound_listener(port, address);
                    Some((listener.name.clone(), listener))
                })
                .collect::<BTreeMap<String, Listener>>()
        };
        let now = PerScope {
            everyone: listeners(&variants.everyone),
            scoped: (variants.scoped.iter())
                .map(|(selector, ports)| (selector.clone(), listeners(ports)))
                .collect(),
        };
        self.bound_ingress_put = put_bound(&self.bound_ingress_put, &now, update);
    }
}

/// The root namespace's default as each namespace's sidecars read it, where its TLS or TCP
/// bound listeners name hosts by the sidecars' own namespace (`./`): a variant for each
/// namespace with a service on such a listener's port and no `Sidecar` of its own (which
/// would replace the default), its listeners' routes read for that namespace. The other
/// namespaces' sidecars keep the default as built for anyone, in which `./` names nothing.
fn own_namespace_variants(
    mesh: &Mesh,
    everyone: &[BoundEgress],
) -> Vec<(Selector, Vec<BoundEgress>)> {
    let ports: BTreeSet<u32> = (everyone.iter())
        .filter(|b| b.names_own_namespace())
        .map(|b| b.port)
        .collect();
    if ports.is_empty() {
        return Vec::new();
    }
    let (in_force, _) = mesh.sidecar_scopes.in_force();
    let scoped_apart: BTreeSet<&str> = (in_force.iter())
        .filter_map(|(covers, _)| match covers {
            Covers::Namespace(ns) => Some(ns.as_str()),
            _ => None,
        })
        .collect();
    let namespaces: BTreeSet<&str> = (mesh.services.values())
        .filter(|s| s.ports.iter().any(|p| ports.contains(&p.number)))
        .map(|s| s.namespace())
        .filter(|ns| !scoped_apart.contains(ns))
        .collect();
    namespaces
        .into_iter()
        .map(|ns| {
            let read_in_ns = |b: &BoundEgress| {
                let mut b = b.clone();
                if let Carries::Streams(streams) = &mut b.carries {
                    streams.caller = Some((ns.to_string(), BTreeMap::new()));
                }
                b
            };
            let bound = everyone.iter().map(read_in_ns).collect();
            (Covers::Namespace(ns.to_string()).selector(), bound)
        })
        .collect()
}

/// The listeners of one set of sidecars' bound egress listeners `bound`.
fn egress_listeners(
    mesh: &Mesh,
    bound: &[BoundEgress],
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, Listener> {
    bound
        .iter()
        .filter_map(|b| {
            let listener = match &b.carries {
                Carries::Http => outbound::bound_http_port(&b.address, b.port),
                Carries::Streams(streams) => bound_streams::listener(mesh, b, streams, problems)?,
            };
            Some((b.name(), listener))
        })
        .collect()
}

/// Puts each listener of `now` for the sets of sidecars that have it, visible to them alone,
/// and removes the variants of `before` that no set has any more; returns what was put.
fn put_bound(
    before: &PutFor,
    now: &PerScope<BTreeMap<String, Listener>>,
    update: &mut Update,
) -> PutFor {
    let names: BTreeSet<&String> = (now.everyone.keys())
        .chain(
            now.scoped
                .iter()
                .flat_map(|(_, listeners)| listeners.keys()),
        )
        .collect();
    let mut put_now = PutFor::new();
    for name in names {
        let sets = std::iter::once((sidecars(), &now.everyone))
            .chain((now.scoped.iter()).map(|(selector, listeners)| (selector.clone(), listeners)));
        let mut selectors = BTreeSet::new();
        let mut rules = Vec::new();
        for (selector, listeners) in sets {
            let listener = listeners.get(name);
            if let Some(listener) = listener {
                put(update, selector.clone(), type_url::LISTENER, name, listener);
                selectors.insert(selector.clone());
            }
            rules.push((selector, listener.is_some()));
        }
        update.set_visibility(type_url::LISTENER, name, Some(Visibility::new(rules)));
        put_now.insert(name.clone(), selectors);
    }
    for (name, selectors) in before {
        let kept = put_now.get(name);
        for selector in selectors
            .iter()
            .filter(|s| kept.is_none_or(|k| !k.contains(*s)))
        {
            update.remove_for(selector.clone(), type_url::LISTENER, name);
        }
    }
    put_now
}
