//! A simulated proxy speaking state-of-the-world ADS: every response carries the full set of a
//! type; every ACK repeats the version, the nonce and the subscribed names.

use std::sync::Arc;

use bytes::Bytes;
use capstan_xds::type_url;

use super::{Awaited, Env, Kind, Phase, ProxyError, Step, endpoint_converged};
use crate::cluster_memo;
use crate::name_set::{NameSet, SetKey};
use crate::request;
use crate::xds_scan::{self, SotwResponse};

/// The version and nonce of the last response of one type, repeated in its ACK.
#[derive(Debug, Default)]
struct Ack {
    version: Box<str>,
    nonce: Box<str>,
}

/// One proxy's SotW client state.
#[derive(Debug)]
pub struct SotwProxy {
    node: Bytes,
    phase: Phase,
    clusters: Arc<NameSet>,
    routes: Arc<NameSet>,
    awaited: Option<Awaited>,
    acks: [Ack; 4],
}

impl SotwProxy {
    /// A proxy that will identify itself with the encoded `Node` `node`.
    pub fn new(node: Bytes, empty: Arc<NameSet>) -> Self {
        Self {
            node,
            phase: Phase::Clusters,
            clusters: empty.clone(),
            routes: empty,
            awaited: None,
            acks: Default::default(),
        }
    }

    /// The first request: clusters, wildcard, with the node.
    pub fn start(&mut self) -> Vec<Bytes> {
        // The node goes only on the first request; it is not kept after.
        let node = std::mem::take(&mut self.node);
        vec![request::sotw(type_url::CLUSTER, "", "", &[], &node)]
    }

    pub fn synced(&self) -> bool {
        self.phase == Phase::Synced
    }

    /// Handles one encoded `DiscoveryResponse`.
    pub fn on_response(&mut self, message: &[u8], env: &Env<'_>) -> Result<Step, ProxyError> {
        let response = SotwResponse::parse(message)?;
        let kind = Kind::of(response.type_url)?;
        self.acks[kind as usize] = Ack {
            version: response.version_info.into(),
            nonce: response.nonce.into(),
        };
        let mut step = Step::default();
        match kind {
            Kind::Clusters => self.on_clusters(&response, env, &mut step)?,
            Kind::Endpoints => self.on_endpoints(&response, env, &mut step)?,
            Kind::Listeners => self.on_listeners(&response, env, &mut step)?,
            Kind::Routes => self.on_routes(&response, &mut step)?,
        }
        Ok(step)
    }

    /// A request for `kind` carrying its last version and nonce: an ACK, or a change of the
    /// subscription to `names` (encoded; empty for wildcard).
    fn request(&self, kind: Kind, names: &[u8]) -> Bytes {
        let ack = &self.acks[kind as usize];
        request::sotw(kind.type_url(), &ack.version, &ack.nonce, names, &[])
    }

    fn on_clusters(
        &mut self,
        response: &SotwResponse<'_>,
        env: &Env<'_>,
        step: &mut Step,
    ) -> Result<(), ProxyError> {
        let mut key = SetKey::default();
        cluster_memo::with(|clusters| {
            for any in response.anys() {
                let cluster = clusters.cluster(any?)?;
                if let Some(service) = cluster.eds_service {
                    key.add_hash(service);
                }
                step.converged |= env.target.is_marker_number(cluster.marker);
            }
            Ok::<_, ProxyError>(())
        })?;
        step.requests.push(self.request(Kind::Clusters, &[]));
        if key != self.clusters.key() {
            let set = env.interner.get_or_build(key, || {
                response
                    .resources()
                    .filter_map(|body| xds_scan::cluster(body.ok()?).ok()?.eds_service)
                    .map(Box::from)
                    .collect()
            });
            self.clusters = set;
            step.requests
                .push(self.request(Kind::Endpoints, self.clusters.encoded()));
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
        response: &SotwResponse<'_>,
        env: &Env<'_>,
        step: &mut Step,
    ) -> Result<(), ProxyError> {
        for body in response.resources() {
            let body = body?;
            let name = xds_scan::resource_name(body)?;
            step.converged |= endpoint_converged(&env.target, name, body)?;
            if self.phase == Phase::Endpoints
                && let Some(awaited) = self.awaited.as_mut()
            {
                awaited.mark(name);
            }
        }
        step.requests
            .push(self.request(Kind::Endpoints, self.clusters.encoded()));
        if self.phase == Phase::Endpoints {
            self.maybe_endpoints_done(step);
        }
        Ok(())
    }

    fn maybe_endpoints_done(&mut self, step: &mut Step) {
        if self.awaited.as_ref().is_some_and(Awaited::complete) {
            self.awaited = None;
            self.phase = Phase::Listeners;
            step.requests
                .push(request::sotw(type_url::LISTENER, "", "", &[], &[]));
        }
    }

    fn on_listeners(
        &mut self,
        response: &SotwResponse<'_>,
        env: &Env<'_>,
        step: &mut Step,
    ) -> Result<(), ProxyError> {
        let mut routes = Vec::new();
        for body in response.resources() {
            routes.extend(xds_scan::listener_route_names(body?)?);
        }
        step.requests.push(self.request(Kind::Listeners, &[]));
        let key = SetKey::of(routes.iter().map(String::as_str));
        if key != self.routes.key() {
            self.routes = env
                .interner
                .get_or_build(key, || routes.into_iter().map(Box::from).collect());
            step.requests
                .push(self.request(Kind::Routes, self.routes.encoded()));
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
        response: &SotwResponse<'_>,
        step: &mut Step,
    ) -> Result<(), ProxyError> {
        for body in response.resources() {
            let name = xds_scan::resource_name(body?)?;
            if self.phase == Phase::Routes
                && let Some(awaited) = self.awaited.as_mut()
            {
                awaited.mark(name);
            }
        }
        step.requests
            .push(self.request(Kind::Routes, self.routes.encoded()));
        if self.phase == Phase::Routes {
            self.maybe_routes_done(step);
        }
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
    use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
    use prost::Message;
    use std::collections::{HashMap, VecDeque};

    fn response(mesh: &Mesh, type_url: &str, names: &[String], nonce: &str) -> Vec<u8> {
        let all = resources(mesh, type_url);
        DiscoveryResponse {
            version_info: format!("v-{nonce}"),
            resources: all
                .into_iter()
                .filter(|(name, _)| names.is_empty() || names.contains(name))
                .map(|(_, any)| any)
                .collect(),
            type_url: type_url.to_string(),
            nonce: nonce.to_string(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn decode(requests: &[Bytes]) -> Vec<DiscoveryRequest> {
        requests
            .iter()
            .map(|r| DiscoveryRequest::decode(r.clone()).expect("decodes"))
            .collect()
    }

    /// Plays a server: answers every request whose names differ from the last ones it
    /// answered for that type (so ACKs go unanswered).
    fn sync(proxy: &mut SotwProxy, mesh: &Mesh, env: &Env<'_>) -> Vec<DiscoveryRequest> {
        let mut sent = Vec::new();
        let mut answered: HashMap<String, Vec<String>> = HashMap::new();
        let mut queue: VecDeque<DiscoveryRequest> = decode(&proxy.start()).into();
        let mut nonce = 0;
        while let Some(request) = queue.pop_front() {
            sent.push(request.clone());
            if answered.get(&request.type_url) == Some(&request.resource_names) {
                continue;
            }
            answered.insert(request.type_url.clone(), request.resource_names.clone());
            nonce += 1;
            let bytes = response(
                mesh,
                &request.type_url,
                &request.resource_names,
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
        let mut proxy = SotwProxy::new(request::encode_node(1), interner.empty());
        let sent = sync(&mut proxy, &mesh, &env);
        assert!(proxy.synced());
        let order: Vec<&str> = sent.iter().map(|r| type_url::short(&r.type_url)).collect();
        assert_eq!(
            order,
            ["cds", "cds", "eds", "eds", "lds", "lds", "rds", "rds"]
        );
        assert!(sent[0].node.is_some(), "node on the first request");
        assert!(sent[1..].iter().all(|r| r.node.is_none()));
        assert_eq!(sent[2].resource_names, ["svc-0", "svc-1", "svc-2"]);
        assert_eq!(
            sent[3].resource_names, sent[2].resource_names,
            "ACK repeats names"
        );
        assert_eq!(sent[3].response_nonce, "2");
        assert_eq!(sent[3].version_info, "v-2");
        assert_eq!(sent[6].resource_names, [crate::mesh::ROUTE_NAME]);
    }

    #[test]
    fn detects_endpoint_and_marker_changes() {
        let mut mesh = Mesh::new(2, 2);
        let interner = Interner::new();
        let mut env = Env {
            interner: &interner,
            target: Target::default(),
        };
        let mut proxy = SotwProxy::new(request::encode_node(1), interner.empty());
        sync(&mut proxy, &mesh, &env);

        env.target.endpoint_port = Some(9001);
        mesh.set_endpoint_port(0, 9001).expect("valid");
        let eds = response(&mesh, type_url::ENDPOINT, &[], "10");
        let step = proxy.on_response(&eds, &env).expect("valid");
        assert!(step.converged && !step.synced);
        assert_eq!(decode(&step.requests)[0].response_nonce, "10");

        env.target = Target {
            marker: Some(0),
            ..Default::default()
        };
        assert!(!proxy.on_response(&eds, &env).expect("valid").converged);
        mesh.add_cluster(&Target::marker_name(0)).expect("valid");
        let cds = response(&mesh, type_url::CLUSTER, &[], "11");
        let step = proxy.on_response(&cds, &env).expect("valid");
        assert!(step.converged);
        let requests = decode(&step.requests);
        assert_eq!(requests.len(), 2, "ACK, then EDS for the new cluster");
        assert_eq!(requests[1].resource_names, ["marker-0", "svc-0", "svc-1"]);
        assert_eq!(
            requests[1].response_nonce, "10",
            "EDS request carries the EDS nonce"
        );
        let again = proxy.on_response(&cds, &env).expect("valid");
        assert_eq!(again.requests.len(), 1, "unchanged clusters: only the ACK");
    }

    #[test]
    fn refuses_unknown_types_and_garbage() {
        let interner = Interner::new();
        let env = Env {
            interner: &interner,
            target: Target::default(),
        };
        let mut proxy = SotwProxy::new(Bytes::new(), interner.empty());
        let other = DiscoveryResponse {
            type_url: "type.googleapis.com/other".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(matches!(
            proxy.on_response(&other, &env),
            Err(ProxyError::UnexpectedType(_))
        ));
        assert!(matches!(
            proxy.on_response(&[0x0a, 0x09], &env),
            Err(ProxyError::Wire(_))
        ));
    }
}
