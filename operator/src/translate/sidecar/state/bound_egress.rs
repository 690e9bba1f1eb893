//! The egress listeners `Sidecar`s bind to sockets of their own (`captureMode: NONE`): one
//! listener per address and port, served to the sidecars whose scope in force binds it
//! (a visibility rule per scope), routed through the port's route configuration.

use std::collections::{BTreeMap, BTreeSet};

use capstan_xds::{Update, Visibility, type_url};

use super::super::outbound;
use super::{CaptureState, put, sidecars};
use crate::model::sidecar_scope::{BoundEgress, BoundEgressVariants};

impl CaptureState {
    /// Puts the bound egress listeners of `variants` (a `Sidecar` changed), each seen by the
    /// sidecars whose scope binds it; removes those no scope binds any more.
    pub fn set_bound_egress(&mut self, variants: &BoundEgressVariants, update: &mut Update) {
        if self.bound_egress == *variants {
            return;
        }
        let all: BTreeMap<String, &BoundEgress> = (variants.everyone.iter())
            .chain(variants.scoped.iter().flat_map(|(_, bound)| bound))
            .map(|b| (b.name(), b))
            .collect();
        for (name, bound) in &all {
            let listener = outbound::bound_http_port(&bound.address, bound.port);
            put(update, sidecars(), type_url::LISTENER, name, &listener);
            let binds = |list: &Vec<BoundEgress>| list.iter().any(|b| b == *bound);
            let rules = std::iter::once((sidecars(), binds(&variants.everyone))).chain(
                (variants.scoped.iter()).map(|(selector, list)| (selector.clone(), binds(list))),
            );
            update.set_visibility(type_url::LISTENER, name, Some(Visibility::new(rules)));
        }
        let before: BTreeSet<String> = (self.bound_egress.everyone.iter())
            .chain(self.bound_egress.scoped.iter().flat_map(|(_, bound)| bound))
            .map(BoundEgress::name)
            .collect();
        for gone in before.iter().filter(|name| !all.contains_key(*name)) {
            update.remove_for(sidecars(), type_url::LISTENER, gone);
        }
        self.bound_egress = variants.clone();
    }

    /// The ports some sidecars have a bound egress listener on: each needs its route
    /// configuration, with services on it or not.
    pub fn bound_ports(&self) -> impl Iterator<Item = u32> + '_ {
        (self.bound_egress.everyone.iter())
            .chain(self.bound_egress.scoped.iter().flat_map(|(_, bound)| bound))
            .map(|b| b.port)
    }
}
