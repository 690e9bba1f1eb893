//! The DestinationRule credentials' part of the translator (`translate::upstream_credentials`):
//! rebuilt whole when a rule of a changed host names a credential (now or before), or a
//! Secret of a named credential changes.

use std::collections::{BTreeMap, BTreeSet};

use capstan_xds::{Resource, Selector, Update, type_url};

use super::Translator;
use crate::model::{Affected, Mesh, Problem};
use crate::translate::upstream_credentials::{self, CredentialUse};

/// What the credential Secrets were last built from and into.
#[derive(Default)]
pub(super) struct CredentialState {
    /// Host → where its rules name credentials (hosts naming none are absent).
    uses: BTreeMap<String, Vec<CredentialUse>>,
    /// The Secret resources served, by selector and name.
    resources: BTreeSet<(Selector, String)>,
    pub(super) problems: Vec<Problem>,
}

impl CredentialState {
    /// Whether Secret `secret` is a credential some rule names, or its `-cacert`.
    fn names_secret(&self, secret: &str) -> bool {
        let base = secret.strip_suffix("-cacert").unwrap_or(secret);
        self.uses
            .values()
            .flatten()
            .any(|u| u.credential == secret || u.credential == base)
    }
}

impl Translator {
    /// Re-reads the credentials the rules of `hosts` name; rebuilds the Secret resources when
    /// those or the Secrets they name changed.
    pub(super) fn refresh_upstream_credentials(
        &mut self,
        mesh: &Mesh,
        affected: &Affected,
        update: &mut Update,
    ) {
        let state = &mut self.upstream_credentials;
        let mut changed = affected.secrets.iter().any(|s| state.names_secret(&s.name));
        for host in &affected.hosts {
            let uses = upstream_credentials::uses_of(mesh, host);
            let before = if uses.is_empty() {
                state.uses.remove(host)
            } else {
                state.uses.insert(host.clone(), uses.clone())
            };
            changed |= before.unwrap_or_default() != uses;
        }
        if !changed {
            return;
        }
        let built = upstream_credentials::build(mesh, state.uses.values().flatten());
        let mut resources = BTreeSet::new();
        for (selector, secret) in &built.secrets {
            if let Some(r) = Resource::encode(secret.name.clone(), secret) {
                resources.insert((selector.clone(), secret.name.clone()));
                update.put_for(selector.clone(), r);
            }
        }
        for (selector, name) in state.resources.difference(&resources) {
            update.remove_for(selector.clone(), type_url::SECRET, name);
        }
        state.resources = resources;
        state.problems = built.problems;
    }
}
