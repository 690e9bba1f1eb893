//! A simulated proxy speaking Delta (incremental) ADS: responses carry only changed resources
//! and removals; an ACK is the type and the nonce; subscriptions change by difference.

use std::sync::Arc;

use bytes::Bytes;
use capstan_xds::type_url;

use super::{Awaited, Env, Kind, Phase, ProxyError, Step, endpoint_converged};
use crate::name_set::NameSet;
use crate::request;
use crate::xds_scan::{self, DeltaResponse};

/// One proxy's Delta client state.
#[derive(Debug)]
pub struct DeltaProxy {
    node: Bytes,
    phase: Phase,
    /// The EDS names subscribed to (the EDS clusters' service names).
    clusters: Arc<NameSet>,
    routes: Arc<NameSet>,
    awaited: Option<Awaited>,
}

impl DeltaProxy {
    /// A proxy that will identify itself with the encoded `Node` `node`.
    pub fn new(node: Bytes, empty: Arc<NameSet>) -> Self {
        Self {
            node,
            phase: Phase::Clusters,
            clusters: empty.clone(),
            routes: empty,
            awaited: None,
        }
    }

    /// The first request: clusters, (legacy) wildcard, with the node.
    pub fn start(&mut self) -> Vec<Bytes> {
        // The node goes only on the first request; it is not kept after.
        let node = std::mem::take(&mut self.node);
        vec![request::delta(type_url::CLUSTER, "", &[], &[], &node)]
    }

    pub fn synced(&self) -> bool {
        self.phase == Phase::Synced
    }

    /// Handles one encoded `DeltaDiscoveryResponse`.
    pub fn on_response(&mut self, message: &[u8], env: &Env<'_>) -> Result<Step, ProxyError> {
        let response = DeltaResponse::parse(message)?;
        let kind = Kind::of(response.type_url)?;
        let mut step = Step::default();
        step.requests.push(request::delta(
            kind.type_url(),
            response.nonce,
            &[],
            &[],
            &[],
        ));
        match kind {
            Kind::Clusters => self.on_clusters(&response, env, &mut step)?,
            Kind::Endpoints => self.on_endpoints(&response, env, &mut step)?,
            Kind::Listeners => self.on_listeners(&response, env, &mut step)?,
            Kind::Routes => self.on_routes(&response, &mut step)?,
        }
        Ok(step)
    }

    fn on_clusters(
        &mut self,
        response: &DeltaResponse<'_>,
        env: &Env<'_>,
        step: &mut Step,
    ) -> Result<(), ProxyError> {
        let mut added: Vec<&str> = Vec::new();
        for resource in response.resources() {
            let cluster = xds_scan::cluster(resource?.body)?;
            step.converged |= env.target.is_marker(cluster.name);
            if let Some(service) = cluster.eds_service
                && !self.clusters.contains(service)
            {
                added.push(service);
            }
        }
        // A removed cluster is taken to have its own name as EDS service, as in the bench mesh.
        let mut removed: Vec<&str> = Vec::new();
        for name in response.removed() {
            let name = name?;
            if self.clusters.contains(name) {
                removed.push(name);
            }
        }
        added.sort_unstable();
        added.dedup();
        removed.sort_unstable();
        removed.dedup();
        if !added.is_empty() || !removed.is_empty() {
            let mut key = self.clusters.key();
            added.iter().for_each(|n| key.add(n));
            removed.iter().for_each(|n| key.remove(n));
            let current = &self.clusters;
            let set = env.interner.get_or_build(key, || {
                current
                    .names()
                    .filter(|n| removed.binary_search(n).is_err())
                    .chain(added.iter().copied())
                    .map(Box::from)
                    .collect()
            });
            let subscribe = if self.clusters.is_empty() {
                set.encoded().clone()
            } else {
                request::encode_names(added.iter().copied())
            };
            step.requests.push(request::delta(
                type_url::ENDPOINT,
                "",
                &subscribe,
                &removed,
                &[],
            ));
            self.clusters = set;
        }
        if self.phase == Phase::Clusters {
            self.phase = Phase::Endpoints;
            self.awaited = Some(Awaited::new(self.clusters.clone()));
            self.maybe_endpoints_done(step);
        }
        Ok(())
    }

    fn on_endpoints(
        &mut self,
        response: &DeltaResponse<'_>,
        env: &Env<'_>,
        step: &mut Step,
    ) -> Result<(), ProxyError> {
        for resource in response.resources() {
            let resource = resource?;
            let name = if resource.name.is_empty() {
                xds_scan::resource_name(resource.body)?
            } else {
                resource.name
            };
            step.converged |= endpoint_converged(&env.target, name, resource.body)?;
            if self.phase == Phase::Endpoints
                && let Some(awaited) = self.awaited.as_mut()
            {
                awaited.mark(name);
            }
        }
        if self.phase == Phase::Endpoints {
            // A server may answer a subscription to a name it does not have with a removal.
            for name in response.removed() {
                let name = name?;
                if let Some(awaited) = self.awaited.as_mut() {
                    awaited.mark(name);
                }
            }
            self.maybe_endpoints_done(step);
        }
        Ok(())
    }

    fn maybe_endpoints_done(&mut self, step: &mut Step) {
        if self.awaited.as_ref().is_some_and(Awaited::complete) {
            self.awaited = None;
            self.phase = Phase::Listeners;
            step.requests
                .push(request::delta(type_url::LISTENER, "", &[], &[], &[]));
        }
    }

    fn on_listeners(
        &mut self,
        response: &DeltaResponse<'_>,
        env: &Env<'_>,
        step: &mut Step,
    ) -> Result<(), ProxyError> {
        let mut routes: Vec<String> = Vec::new();
        for resource in response.resources() {
            routes.extend(xds_scan::listener_route_names(resource?.body)?);
        }
        let new: Vec<&str> = routes
            .iter()
            .map(String::as_str)
            .filter(|r| !self.routes.contains(r))
            .collect();
        if !new.is_empty() {
            let mut key = self.routes.key();
            new.iter().for_each(|n| key.add(n));
            let current = &self.routes;
            self.routes = env.interner.get_or_build(key, || {
                current
                    .names()
                    .chain(new.iter().copied())
                    .map(Box::from)
                    .collect()
            });
            step.requests.push(request::delta(
                type_url::ROUTE,
                "",
                &request::encode_names(new.iter().copied()),
                &[],
                &[],
            ));
        }
        if self.phase == Phase::Listeners {
            self.phase = Phase::Routes;
            self.awaited = Some(Awaited::new(self.routes.clone()));
            self.maybe_routes_done(step);
        }
        Ok(())
    }

    fn on_routes(
        &mut self,
        response: &DeltaResponse<'_>,
        step: &mut Step,
    ) -> Result<(), ProxyError> {
        if self.phase != Phase::Routes {
            return Ok(());
        }
        for resource in response.resources() {
            let resource = resource?;
            let name = if resource.name.is_empty() {
                xds_scan::resource_name(resource.body)?
            } else {
                resource.name
            };
            if let Some(awaited) = self.awaited.as_mut() {
                awaited.mark(name);
            }
        }
        self.maybe_routes_done(step);
        Ok(())
    }

    fn maybe_routes_done(&mut self, step: &mut Step) {
        if self.awaited.as_ref().is_some_and(Awaited::complete) {
            self.awaited = None;
            self.phase = Phase::Synced;
            step.synced = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::Mesh;
    use crate::name_set::Interner;
    use crate::proxy::test_server::resources;
    use crate::tracker::Target;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
    };
    use prost::Message;
    use std::collections::VecDeque;

    fn response(mesh: &Mesh, type_url: &str, names: &[String], nonce: &str) -> Vec<u8> {
        DeltaDiscoveryResponse {
            resources: resources(mesh, type_url)
                .into_iter()
                .filter(|(name, _)| names.is_empty() || names.contains(name))
                .map(|(name, any)| Resource {
                    name,
                    version: "1".into(),
                    resource: Some(any),
                    ..Default::default()
                })
                .collect(),
            type_url: type_url.to_string(),
            nonce: nonce.to_string(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn decode(requests: &[Bytes]) -> Vec<DeltaDiscoveryRequest> {
        requests
            .iter()
            .map(|r| DeltaDiscoveryRequest::decode(r.clone()).expect("decodes"))
            .collect()
    }

    /// Plays a server: answers every request that is not an ACK.
    fn sync(proxy: &mut DeltaProxy, mesh: &Mesh, env: &Env<'_>) -> Vec<DeltaDiscoveryRequest> {
        let mut sent = Vec::new();
        let mut queue: VecDeque<DeltaDiscoveryRequest> = decode(&proxy.start()).into();
        let mut nonce = 0;
        while let Some(request) = queue.pop_front() {
            sent.push(request.clone());
            if !request.response_nonce.is_empty() {
                continue;
            }
            nonce += 1;
            let bytes = response(
                mesh,
                &request.type_url,
                &request.resource_names_subscribe,
                &nonce.to_string(),
            );
            let step = proxy.on_response(&bytes, env).expect("valid response");
            queue.extend(decode(&step.requests));
        }
        sent
    }

    #[test]
    fn syncs_like_envoy_in_order() {
        let mesh = Mesh::new(3, 2);
        let interner = Interner::new();
        let env = Env {
            interner: &interner,
            target: Target::default(),
        };
        let mut proxy = DeltaProxy::new(request::encode_node(2), interner.empty());
        let sent = sync(&mut proxy, &mesh, &env);
        assert!(proxy.synced());
        let order: Vec<&str> = sent.iter().map(|r| type_url::short(&r.type_url)).collect();
        assert_eq!(
            order,
            ["cds", "cds", "eds", "eds", "lds", "lds", "rds", "rds"]
        );
        assert!(sent[0].node.is_some() && sent[0].resource_names_subscribe.is_empty());
        assert!(sent[1..].iter().all(|r| r.node.is_none()));
        assert_eq!(sent[1].response_nonce, "1", "ACK of the CDS response");
        assert_eq!(
            sent[2].resource_names_subscribe,
            ["svc-0", "svc-1", "svc-2"]
        );
        assert_eq!(sent[6].resource_names_subscribe, [crate::mesh::ROUTE_NAME]);
    }

    #[test]
    fn detects_changes_and_follows_cluster_churn() {
        let mut mesh = Mesh::new(2, 2);
        let interner = Interner::new();
        let mut env = Env {
            interner: &interner,
            target: Target::default(),
        };
        let mut proxy = DeltaProxy::new(request::encode_node(1), interner.empty());
        sync(&mut proxy, &mesh, &env);

        env.target.endpoint_port = Some(9001);
        mesh.set_endpoint_port(0, 9001).expect("valid");
        let eds = response(&mesh, type_url::ENDPOINT, &["svc-0".into()], "10");
        let step = proxy.on_response(&eds, &env).expect("valid");
        assert!(step.converged);
        assert_eq!(decode(&step.requests)[0].response_nonce, "10");

        env.target = Target {
            marker: Some(1),
            ..Default::default()
        };
        mesh.add_cluster(&Target::marker_name(1)).expect("valid");
        let cds = response(&mesh, type_url::CLUSTER, &["marker-1".into()], "11");
        let step = proxy.on_response(&cds, &env).expect("valid");
        assert!(step.converged);
        let requests = decode(&step.requests);
        assert_eq!(requests[1].resource_names_subscribe, ["marker-1"]);
        assert!(requests[1].response_nonce.is_empty());

        let removal = DeltaDiscoveryResponse {
            type_url: type_url::CLUSTER.into(),
            nonce: "12".into(),
            removed_resources: vec!["svc-1".into(), "unknown".into()],
            ..Default::default()
        }
        .encode_to_vec();
        let step = proxy.on_response(&removal, &env).expect("valid");
        assert!(!step.converged);
        let requests = decode(&step.requests);
        assert_eq!(requests[1].resource_names_unsubscribe, ["svc-1"]);
        assert!(requests[1].resource_names_subscribe.is_empty());
        assert_eq!(
            proxy.clusters.names().collect::<Vec<_>>(),
            ["marker-1", "svc-0"]
        );
    }
}
