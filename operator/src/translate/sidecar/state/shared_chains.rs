//! The listeners several services share on a port — a TLS port's (one filter chain per
//! service, by SNI) and the CIDR addresses' (one chain per range, by destination) — scoped
//! chain by chain. A sidecar that does not see a service (a `Sidecar`'s egress hosts, the
//! service's `exportTo`) gets the listener without that service's chain, so its connection
//! goes where its outbound traffic policy says, as with istiod (which builds each sidecar's
//! chains from the services it sees), instead of to a cluster the sidecar was never sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use capstan_xds::{ProxyInfo, Resource, Role, Selector, Update, Visibility, type_url};

use super::super::PASSTHROUGH;
use super::port_listeners::{PortListener, caller_selector, fallthrough_chain};
use super::selector_meets::with_meets;
use super::sidecar_settings::fallthroughs;
use super::split_listener::{SplitListener, chain_field};
use super::{CaptureState, sidecars};
use crate::model::sidecar_scope::PerScope;
use crate::translate::route::{Caller, Labels, class_of};

/// A port's listener that services share, as built for every sidecar.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SharedListener {
    pub listener: PortListener,
    /// Whether it ends with a chain for what no service has (a TLS port's, or one of CIDR
    /// addresses alone), to where each sidecar's outbound traffic policy says.
    pub open: bool,
}

/// A shared listener as kept between changes: in pieces, each chain encoded once, so that a
/// set of sidecars' copy is written from them (the listener is put again whenever some
/// chain's visibility changes, not only when it is rebuilt).
#[derive(Debug)]
pub(super) struct KeptListener {
    everyone: SplitListener,
    by_caller: BTreeMap<Caller, SplitListener>,
    selectors: Vec<Labels>,
    /// The host of each chain that is one service's, by chain name.
    chain_hosts: BTreeMap<String, String>,
    open: bool,
}

impl KeptListener {
    fn new(shared: SharedListener) -> Self {
        let PortListener {
            everyone,
            by_caller,
            selectors,
            chain_hosts,
        } = shared.listener;
        Self {
            everyone: SplitListener::new(everyone),
            by_caller: by_caller
                .into_iter()
                .map(|(caller, l)| (caller, SplitListener::new(l)))
                .collect(),
            selectors,
            chain_hosts,
            open: shared.open,
        }
    }

    /// The variant the sidecars `selector` picks read (`None`: everyone's): their namespace's
    /// for their label class, else any namespace's for it.
    fn caller_for(&self, selector: &Selector) -> Option<&Caller> {
        if self.by_caller.is_empty() {
            return None;
        }
        let class = class_of(&self.selectors, &selector.labels);
        let named = selector.namespace.as_deref().and_then(|ns| {
            let caller = Caller::new(Some(ns), &class);
            self.by_caller.get_key_value(&caller)
        });
        let found = named.or_else(|| self.by_caller.get_key_value(&Caller::new(None, &class)));
        found.map(|(caller, _)| caller)
    }
}

/// Who sees the shared chains: per (host, port), where some sidecar does not; by host, the
/// ports where it has such a chain; and the ports whose listener is to be put again.
#[derive(Debug, Default)]
pub(super) struct ChainScopes {
    hidden: BTreeMap<(String, u32), Visibility>,
    ports_of: BTreeMap<String, BTreeSet<u32>>,
    dirty: BTreeSet<u32>,
}

impl CaptureState {
    /// The ports where `host` has a filter chain in a listener it shares with other services.
    pub fn shared_chain_ports(&self, host: &str) -> Vec<u32> {
        let ports = self.chain_scopes.ports_of.get(host);
        ports.into_iter().flatten().copied().collect()
    }

    /// Whether some sidecar is kept from some service's shared chain.
    pub fn hides_shared_chains(&self) -> bool {
        !self.chain_scopes.hidden.is_empty()
    }

    /// Sets who sees `host`'s chain on `port` (`None`: every sidecar); the listener is put
    /// again by [`Self::put_scoped_chains`] if that changed.
    pub fn scope_shared_chain(&mut self, host: &str, port: u32, seen: Option<Visibility>) {
        let key = (host.to_string(), port);
        let scopes = &mut self.chain_scopes;
        if scopes.hidden.get(&key) == seen.as_ref() {
            return;
        }
        match seen {
            Some(visibility) => scopes.hidden.insert(key, visibility),
            None => scopes.hidden.remove(&key),
        };
        scopes.dirty.insert(port);
    }

    /// Has the open-ended shared listeners put again (the fallthrough chains changed).
    pub(super) fn rescope_open_listeners(&mut self) {
        let open = self.shared.iter().filter(|(_, s)| s.open);
        let ports: Vec<u32> = open.map(|(port, _)| *port).collect();
        self.chain_scopes.dirty.extend(ports);
    }

    /// Puts the shared listeners that were rebuilt or whose chains' visibility or fallthrough
    /// changed since the last call.
    pub fn put_scoped_chains(&mut self, update: &mut Update) {
        for port in std::mem::take(&mut self.chain_scopes.dirty) {
            self.put_shared(port, update);
        }
    }

    /// Keeps `listener` as `port`'s shared listener (`None`: it has none now); it is put by
    /// [`Self::put_scoped_chains`], once the visibility of its services' chains is set.
    pub(super) fn set_shared(&mut self, port: u32, listener: Option<SharedListener>) {
        if listener.is_none() && !self.shared.contains_key(&port) {
            return;
        }
        let listener = listener.map(KeptListener::new);
        fn hosts_of(kept: Option<&KeptListener>) -> BTreeSet<&str> {
            let hosts = kept.into_iter().flat_map(|k| k.chain_hosts.values());
            hosts.map(String::as_str).collect()
        }
        // Only this port's hosts that came or went are touched.
        let before = hosts_of(self.shared.get(&port));
        let now = hosts_of(listener.as_ref());
        let scopes = &mut self.chain_scopes;
        for &host in before.difference(&now) {
            scopes.hidden.remove(&(host.to_string(), port));
            if let Some(ports) = scopes.ports_of.get_mut(host) {
                ports.remove(&port);
                if ports.is_empty() {
                    scopes.ports_of.remove(host);
                }
            }
        }
        for &host in now.difference(&before) {
            let ports = scopes.ports_of.entry(host.to_string()).or_default();
            ports.insert(port);
        }
        match listener {
            Some(listener) => {
                self.shared.insert(port, listener);
                scopes.dirty.insert(port);
            }
            None => {
                self.shared.remove(&port);
                scopes.dirty.remove(&port);
            }
        }
    }

    /// Puts `port`'s shared listener for every set of sidecars that reads it differently:
    /// the callers its routes tell apart ([`PortListener::by_caller`]), the scopes
    /// whose outbound traffic policy differs (an open listener's last chain), and the sets of
    /// sidecars some chain's visibility names — each with the chains of what it sees. Sets
    /// that read the same listener share one encoding of it.
    fn put_shared(&mut self, port: u32, update: &mut Update) {
        let Some(kept) = self.shared.get(&port) else {
            return;
        };
        let fallthroughs = kept.open.then(|| {
            self.outbound_modes
                .as_ref()
                .map_or_else(|| PerScope::everyone(PASSTHROUGH), fallthroughs)
        });
        let hidden = self.hidden_chains(kept, port);
        let mut selectors: BTreeSet<Selector> =
            kept.by_caller.keys().map(caller_selector).collect();
        if let Some(fallthroughs) = &fallthroughs {
            selectors.extend(fallthroughs.scoped.iter().map(|(s, _)| s.clone()));
        }
        selectors.extend(
            hidden
                .values()
                .flat_map(|v| v.rules().iter().map(|(s, _)| s.clone())),
        );
        let everyone = sidecars();
        selectors.remove(&everyone);
        if !kept.selectors.is_empty() {
            // Variants by labels alone overlap those by namespace: a sidecar both pick must
            // find a variant made for it.
            selectors = with_meets(selectors);
        }
        let base_of =
            |caller: Option<&Caller>| caller.map_or(&kept.everyone, |c| &kept.by_caller[c]);
        let reading = |selector: &Selector| -> Reading {
            let caller = kept.caller_for(selector);
            let seen = seen_chains(base_of(caller), &hidden, selector);
            let fallthrough = fallthroughs.as_ref().map(|f| *f.for_proxies(selector));
            (caller, seen, fallthrough)
        };
        let mut encoded: HashMap<Reading, Resource> = HashMap::new();
        let mut resource = |selector: &Selector| {
            let key = reading(selector);
            if let Some(resource) = encoded.get(&key) {
                return resource.clone();
            }
            let (caller, seen, fallthrough) = &key;
            let base = base_of(*caller);
            let last = fallthrough.map(|cluster| chain_field(&fallthrough_chain(cluster)));
            let body = base.encode(seen, last.as_deref());
            let resource = Resource::from_bytes(type_url::LISTENER, base.name.clone(), body);
            encoded.insert(key, resource.clone());
            resource
        };
        let variants = selectors.iter().map(|s| (s.clone(), resource(s))).collect();
        let everyone = resource(&everyone);
        self.put_port_resources(everyone, variants, update);
    }

    /// The chains of `kept` (on `port`) that some sidecar does not see, with who sees them.
    fn hidden_chains<'a>(
        &'a self,
        kept: &'a KeptListener,
        port: u32,
    ) -> HashMap<&'a str, &'a Visibility> {
        let hidden = &self.chain_scopes.hidden;
        if hidden.is_empty() {
            // No host has to be copied to be looked up.
            return HashMap::new();
        }
        kept.chain_hosts
            .iter()
            .filter_map(|(chain, host)| {
                let seen = hidden.get(&(host.clone(), port))?;
                Some((chain.as_str(), seen))
            })
            .collect()
    }
}

/// What a set of sidecars reads of a shared listener: the caller whose base listener it
/// reads (`None`: everyone's), which of its chains it sees, and its fallthrough cluster.
type Reading<'a> = (Option<&'a Caller>, Vec<bool>, Option<&'a str>);

/// Which of `listener`'s chains the sidecars `selector` picks see. A set of sidecars is
/// judged by its namespace and labels: every narrower set a visibility rule names is a set of
/// its own ([`CaptureState::put_shared`]).
fn seen_chains(
    listener: &SplitListener,
    hidden: &HashMap<&str, &Visibility>,
    selector: &Selector,
) -> Vec<bool> {
    let sidecar = ProxyInfo {
        role: Role::Sidecar,
        namespace: selector.namespace.clone(),
        labels: selector.labels.clone(),
        ..ProxyInfo::default()
    };
    let sees = |name: &str| hidden.get(name).is_none_or(|seen| seen.allows(&sidecar));
    listener.chain_names().map(sees).collect()
}
