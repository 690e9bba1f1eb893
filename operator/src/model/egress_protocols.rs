//! The reports on Sidecar egress listeners declaring a port protocol a service they name does
//! not have there (`SidecarScope::protocol_mismatches`), kept in step as Sidecars and services
//! change.

use capstan_crds::ObjectKey;

use super::sidecar_scope::SidecarScope;
use super::{Mesh, Problem, Topic};

impl Mesh {
    /// Checks every service against the protocols Sidecar `key`'s egress listeners declare
    /// (it was read again).
    pub(super) fn check_declared_protocols_of(&mut self, key: &ObjectKey, scope: &SidecarScope) {
        if !scope.declares_protocols() {
            return;
        }
        self.declaring_protocols.insert(key.clone());
        let root = self.sidecar_scopes.root_namespace();
        let problems: Vec<(String, Problem)> = (self.services.values())
            .flat_map(|service| {
                let found = scope.protocol_mismatches(service, root);
                found.into_iter().map(|p| (service.host.clone(), p))
            })
            .collect();
        for (host, problem) in problems {
            self.report(key, Topic::EgressProtocol(host), problem);
        }
    }

    /// Checks `host`'s service against the protocols Sidecar egress listeners declare.
    pub(super) fn check_declared_protocols(&mut self, host: &str) {
        // Every host refresh passes here: nothing to allocate for a mesh without them.
        if self.declaring_protocols.is_empty() {
            return;
        }
        let topic = Topic::EgressProtocol(host.to_string());
        let keys: Vec<ObjectKey> = self.declaring_protocols.iter().cloned().collect();
        for key in keys {
            if let Some(topics) = self.problems.get_mut(&key) {
                topics.remove(&topic);
                if topics.is_empty() {
                    self.problems.remove(&key);
                }
            }
            let (Some(scope), Some(service)) = (
                self.sidecar_scopes.by_key.get(&key),
                self.services.get(host),
            ) else {
                continue;
            };
            let root = self.sidecar_scopes.root_namespace();
            for problem in scope.protocol_mismatches(service, root) {
                self.report(&key, topic.clone(), problem);
            }
        }
    }
}
