//! The outbound listeners of one port, from the services using it and how; and how a port
//! listener is put for every sidecar and its variants.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};

use super::super::stream::{self, Built, Sources};
use super::super::subnet_chains::{Claimed, StreamChains, cidr_range, subnet_chain};
use super::super::{outbound, tcp_proxy};
use super::{CaptureState, PortUse, sidecars};
use crate::model::service::Origin;
use crate::model::stream_routes;
use crate::model::{Mesh, Problem};
use crate::translate::route::{self, Caller, Labels};
use capstan_xds::{Resource, Selector, Update, type_url};

/// The outbound listeners of one port.
#[derive(Default)]
pub(super) struct PortListeners {
    /// Those whose filter chains are complete.
    pub same: Vec<PortListener>,
    /// The open-ended one, `0.0.0.0_<port>` of TLS services (by SNI) or of CIDR addresses
    /// alone, whose last filter chain, for what no service has, each sidecar's outbound
    /// traffic policy decides ([`fallthrough_chain`]).
    pub open: Option<PortListener>,
    /// The hosts their routes send to.
    pub destinations: BTreeSet<String>,
    /// The listeners of one service's address, with their service.
    pub owners: Vec<(String, String)>,
}

/// One listener as every sidecar gets it, and as some sets of sidecars get it instead (their
/// `tcp`/`tls` routes differ: `sourceNamespace`, `sourceLabels`, `exportTo`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PortListener {
    pub everyone: Listener,
    /// Without label selectors, only the variants that differ from `everyone`; with them,
    /// every caller's: a sidecar takes the most specific variant selecting it, which must
    /// then be its own.
    pub by_caller: BTreeMap<Caller, Listener>,
    /// The routes' `sourceLabels` selectors: a sidecar's label class among them picks its
    /// variant.
    pub selectors: Vec<Labels>,
    /// The filter chains that are one service's in a listener services share (a TLS
    /// service's by SNI, a CIDR address's by destination), by chain name: a sidecar that does
    /// not see the service does not get its chain ([`super::shared_chains`]).
    pub chain_hosts: BTreeMap<String, String>,
}

impl PortListener {
    pub fn name(&self) -> &str {
        &self.everyone.name
    }

    /// `build` for every sidecar, and for each set of sidecars `sources` tells apart; the
    /// hosts the routes of any of them send to go to `destinations`. Problems are said once,
    /// for every sidecar's. `build` also gives the chains that are one service's, with
    /// their host.
    fn per_caller(
        sources: &Sources,
        destinations: &mut BTreeSet<String>,
        problems: &mut Vec<Problem>,
        build: impl Fn(&Caller, &mut Vec<Problem>) -> Variant,
    ) -> Self {
        let (everyone, mut chain_hosts) = build(&Caller::anyone(), problems);
        destinations.extend(everyone.destinations);
        let mut by_caller = BTreeMap::new();
        for caller in sources.callers() {
            let (built, chains) = build(&caller, &mut Vec::new());
            destinations.extend(built.destinations);
            chain_hosts.extend(chains);
            if sources.by_labels() || built.value != everyone.value {
                by_caller.insert(caller, built.value);
            }
        }
        Self {
            everyone: everyone.value,
            by_caller,
            selectors: sources.selectors.iter().cloned().collect(),
            chain_hosts: chain_hosts.into_iter().collect(),
        }
    }

    /// Each set of sidecars' variant, with the selector picking them.
    pub fn variants(&self) -> Vec<(Selector, Listener)> {
        let variants = self.by_caller.iter();
        variants
            .map(|(c, l)| (caller_selector(c), l.clone()))
            .collect()
    }
}

/// The sidecars `caller` names.
pub(super) fn caller_selector(caller: &Caller) -> Selector {
    let mut selector = sidecars();
    selector.namespace = caller.namespace.as_deref().map(Into::into);
    selector.labels = caller.labels.clone();
    selector
}

/// One set of sidecars' listener, with the (chain name, host) of each chain that is one
/// service's in a listener services share.
type Variant = (Built<Listener>, Vec<(String, String)>);

impl CaptureState {
    /// Puts `everyone` for every sidecar and each of `variants` for its set of sidecars, and
    /// removes the variants of sets it was put for before and is not now.
    pub(super) fn put_port_listener(
        &mut self,
        everyone: &Listener,
        variants: Vec<(Selector, Listener)>,
        update: &mut Update,
    ) {
        let encode = |listener: &Listener| Resource::encode(listener.name.clone(), listener);
        let variants = variants
            .iter()
            .filter_map(|(selector, listener)| Some((selector.clone(), encode(listener)?)));
        let variants = variants.collect();
        if let Some(everyone) = encode(everyone) {
            self.put_port_resources(everyone, variants, update);
        }
    }

    /// [`Self::put_port_listener`] with the listeners encoded.
    pub(super) fn put_port_resources(
        &mut self,
        everyone: Resource,
        variants: Vec<(Selector, Resource)>,
        update: &mut Update,
    ) {
        let name = everyone.name().to_string();
        update.put_for(sidecars(), everyone);
        let selectors: BTreeSet<Selector> = variants.iter().map(|(s, _)| s.clone()).collect();
        let before = self.variant_selectors.remove(&name).unwrap_or_default();
        for gone in before.difference(&selectors) {
            update.remove_for(gone.clone(), type_url::LISTENER, &name);
        }
        for (selector, resource) in variants {
            update.put_for(selector, resource);
        }
        if !selectors.is_empty() {
            self.variant_selectors.insert(name, selectors);
        }
    }
}

/// The outbound listeners of `port`: one for its HTTP services, one for its TLS services
/// (by SNI), one per address of a TCP service or of one without a declared protocol, and
/// one for such a service without an address when nothing else claims the port. A TCP
/// service's CIDR addresses are filter chains (by destination) of the port's `0.0.0.0`
/// listener, the HTTP or TLS one or one of their own.
pub(super) fn port_listeners(
    mesh: &Mesh,
    port: u32,
    users: &BTreeMap<String, PortUse>,
    problems: &mut Vec<Problem>,
) -> PortListeners {
    let mut out = Vec::new();
    let mut owners = Vec::new();
    let mut destinations = BTreeSet::new();
    let http = users.values().any(|u| *u == PortUse::Http);
    let tls: Vec<&str> = users
        .iter()
        .filter(|(_, u)| **u == PortUse::Tls)
        .map(|(h, _)| h.as_str())
        .collect();
    if http {
        for host in &tls {
            report(
                mesh,
                host,
                problems,
                format!(
                    "TLS port {port} is also an HTTP port of other services; its connections are \
                 served as HTTP, not by SNI"
                ),
            );
        }
    }
    let wildcard_taken = http || !tls.is_empty();
    let mut claimed: BTreeMap<String, &str> = BTreeMap::new();
    let mut ranges: Vec<(&str, &str)> = Vec::new();
    let wildcard = ["0.0.0.0".to_string()];
    for (host, how) in users {
        let (addresses, detected) = match how {
            PortUse::Tcp(addresses) => (addresses, false),
            PortUse::Detected(addresses) => (addresses, true),
            PortUse::Http | PortUse::Tls => continue,
        };
        let addresses = if addresses.is_empty() {
            &wildcard[..]
        } else {
            &addresses[..]
        };
        for address in addresses {
            if address.contains('/') {
                if detected {
                    report(
                        mesh,
                        host,
                        problems,
                        format!(
                            "CIDR address {address} of port {port} without a protocol is not \
                         routed: declare the port's protocol"
                        ),
                    );
                } else {
                    ranges.push((host, address));
                }
                continue;
            }
            if address == "0.0.0.0" && wildcard_taken && detected && http {
                // The port's HTTP listener serves it, as an HTTP port (no TCP then).
                continue;
            }
            if address == "0.0.0.0" && wildcard_taken {
                report(
                    mesh,
                    host,
                    problems,
                    format!(
                        "TCP port {port} has no address to tell it apart from the HTTP or TLS \
                     services on port {port}; give the service an address (ServiceEntry \
                     `addresses`)"
                    ),
                );
                continue;
            }
            if let Some(first) = claimed.get(address) {
                report(
                    mesh,
                    host,
                    problems,
                    format!(
                        "{address}:{port} is already the TCP listener of {first}; this service's \
                     traffic on it is not routed"
                    ),
                );
                continue;
            }
            claimed.insert(address.clone(), host);
            let sources = Sources::of(mesh, [host.as_str()]);
            let listener = PortListener::per_caller(
                &sources,
                &mut destinations,
                problems,
                |caller, problems| {
                    let mut claimed = Claimed::default();
                    let built = stream::stream_chains(
                        mesh,
                        host,
                        port,
                        false,
                        caller,
                        &mut claimed,
                        problems,
                    );
                    let value = if detected {
                        let routes = route::detected_routes(host, port, address);
                        outbound::detected_port(address, port, &routes, built.value)
                    } else {
                        outbound::tcp_port(address, port, built.value)
                    };
                    let built = Built {
                        value,
                        destinations: built.destinations,
                    };
                    (built, Vec::new())
                },
            );
            owners.push((listener.name().to_string(), host.clone()));
            out.push(listener);
        }
    }
    if let Some(owner) = claimed.get("0.0.0.0").filter(|_| !ranges.is_empty()) {
        // That listener is the service's own (seen by who sees it); others' ranges stay out.
        for (host, range) in ranges.drain(..) {
            report(
                mesh,
                host,
                problems,
                format!(
                    "CIDR address {range} is not routed: port {port} is taken by {owner}, a TCP \
                 service without an address"
                ),
            );
        }
    }
    let ranges = distinct_ranges(mesh, port, ranges, problems);
    let mut sources = Sources::of(mesh, ranges.iter().map(|(host, _)| *host));
    let mut open = None;
    if http {
        let listener =
            PortListener::per_caller(&sources, &mut destinations, problems, |caller, problems| {
                with_ranges(
                    mesh,
                    port,
                    &ranges,
                    caller,
                    problems,
                    outbound::http_port(port),
                )
            });
        out.push(listener);
    } else if !tls.is_empty() || !ranges.is_empty() {
        for host in &tls {
            sources.add(mesh, host);
        }
        open = Some(PortListener::per_caller(
            &sources,
            &mut destinations,
            problems,
            |caller, problems| {
                let (sni, mut chain_hosts) = if tls.is_empty() {
                    let listener = outbound::bound_by_capture(
                        format!("0.0.0.0_{port}"),
                        "0.0.0.0",
                        port,
                        Vec::new(),
                    );
                    let built = Built {
                        value: listener,
                        destinations: Vec::new(),
                    };
                    (built, Vec::new())
                } else {
                    stream::tls_listener(mesh, port, &tls, caller, problems)
                };
                let (mut built, range_chains) =
                    with_ranges(mesh, port, &ranges, caller, problems, sni.value);
                built.destinations.extend(sni.destinations);
                chain_hosts.extend(range_chains);
                (built, chain_hosts)
            },
        ));
    }
    PortListeners {
        same: out,
        open,
        destinations,
        owners,
    }
}

/// `ranges` (host, CIDR) without the CIDRs an earlier host took (reported).
fn distinct_ranges<'a>(
    mesh: &Mesh,
    port: u32,
    ranges: Vec<(&'a str, &'a str)>,
    problems: &mut Vec<Problem>,
) -> Vec<(&'a str, &'a str)> {
    let mut taken: BTreeMap<&str, &str> = BTreeMap::new();
    let mut out = Vec::new();
    for (host, range) in ranges {
        match taken.get(range) {
            Some(first) => report(
                mesh,
                host,
                problems,
                format!(
                    "{range}:{port} is already an address of {first}; this service's traffic to \
                 it is not routed"
                ),
            ),
            None => {
                taken.insert(range, host);
                out.push((host, range));
            }
        }
    }
    out
}

/// `listener` with the chains of `ranges` (host, CIDR): per host, the chains of its routes'
/// destination subnets, then one per range of its, where connections go as its `tcp`
/// routes for `caller`'s sidecars say (a route naming the range itself as a subnet takes
/// the range's chain, as with istiod). Also each chain's (name, host).
fn with_ranges(
    mesh: &Mesh,
    port: u32,
    ranges: &[(&str, &str)],
    caller: &Caller,
    problems: &mut Vec<Problem>,
    mut listener: Listener,
) -> Variant {
    let owned = ranges.iter().filter_map(|(host, range)| {
        let range = stream_routes::subnet(range)?;
        Some((range, host.to_string()))
    });
    let mut claimed = Claimed::with_ranges(owned);
    let mut destinations = Vec::new();
    let mut chain_hosts = Vec::new();
    let mut hosts: Vec<&str> = Vec::new();
    for (host, _) in ranges {
        if !hosts.contains(host) {
            hosts.push(host);
        }
    }
    for host in hosts {
        let built = stream::stream_chains(mesh, host, port, false, caller, &mut claimed, problems);
        destinations.extend(built.destinations);
        let StreamChains {
            mut by_subnets,
            rest,
        } = built.value;
        let mut chains = Vec::new();
        for (_, range) in ranges.iter().filter(|(h, _)| *h == host) {
            let Some(cidr) = cidr_range(range) else {
                continue;
            };
            let own = stream_routes::subnet(range);
            let routed = by_subnets.iter_mut().find_map(|(subnets, filter)| {
                let at = subnets.iter().position(|s| Some(s) == own.as_ref())?;
                subnets.remove(at);
                Some(filter.clone())
            });
            chains.push(FilterChain {
                name: range_chain_name(range, host),
                filter_chain_match: Some(FilterChainMatch {
                    prefix_ranges: vec![cidr],
                    ..Default::default()
                }),
                filters: vec![routed.unwrap_or_else(|| rest.clone())],
                ..Default::default()
            });
        }
        by_subnets.retain(|(subnets, _)| !subnets.is_empty());
        let any = FilterChainMatch::default();
        let subnet_chains = (by_subnets.into_iter())
            .map(|(subnets, filter)| subnet_chain(&subnets, filter, host, &any));
        let chains: Vec<FilterChain> = subnet_chains.chain(chains).collect();
        chain_hosts.extend(chains.iter().map(|c| (c.name.clone(), host.to_string())));
        listener.filter_chains.extend(chains);
    }
    let built = Built {
        value: listener,
        destinations,
    };
    (built, chain_hosts)
}

/// The filter chain of `host`'s CIDR address `range`.
fn range_chain_name(range: &str, host: &str) -> String {
    format!("{range}|{host}")
}

/// The filter chain ending an open listener (a TLS port's) for names no service has, to
/// `cluster`.
pub(super) fn fallthrough_chain(cluster: &str) -> FilterChain {
    FilterChain {
        name: cluster.to_string(),
        filters: vec![tcp_proxy(cluster, cluster)],
        ..Default::default()
    }
}

pub(super) fn report(mesh: &Mesh, host: &str, problems: &mut Vec<Problem>, message: String) {
    match mesh.services.get(host).map(|s| &s.origin) {
        Some(Origin::Istio(object)) => problems.push(Problem {
            object: object.clone(),
            field: "spec.ports".to_string(),
            message,
        }),
        _ => tracing::warn!(%host, "{message}"),
    }
}
