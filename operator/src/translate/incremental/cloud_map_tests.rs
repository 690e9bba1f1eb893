//! Cloud Map services (in-memory mode) built incrementally: instances changing, ports
//! changing, a ServiceEntry taking the host and giving it back all end up exactly as a full
//! build; an instance change rebuilds load assignments and nothing else.

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_crds::Kind;
use capstan_xds::{SnapshotCache, type_index};

use super::tests::{check, contents, delete, istio, options};
use super::*;
use crate::index::{
    CloudMapEndpoint, CloudMapService, Event, KubeServicePort, NsName, Record, RecordKey,
};
use crate::reconcile::Pipeline;

fn orders(port: u32, endpoints: &[(&str, &str)]) -> Event {
    Event::Apply(Record::CloudMap(CloudMapService {
        id: NsName::new("example.local", "orders"),
        host: "orders.example.local".into(),
        namespace: "cloud-map".into(),
        ports: vec![KubeServicePort {
            name: format!("http-{port}"),
            port,
            protocol: Some(capstan_crds::Protocol::Http),
            target_port: 0,
        }],
        dns: false,
        endpoints: endpoints
            .iter()
            .map(|(address, version)| CloudMapEndpoint {
                address: (*address).into(),
                ports: Arc::new(BTreeMap::new()),
                labels: Arc::new(BTreeMap::from([("version".into(), version.to_string())])),
                locality: "us-east-1/us-east-1a".into(),
            })
            .collect(),
    }))
}

const RULE: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: orders, namespace: cloud-map}
spec:
  host: orders.example.local
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
";

const ENTRY: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: orders, namespace: cloud-map}
spec:
  hosts: [orders.example.local]
  ports: [{number: 9090, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.9.9.9}]
";

#[test]
fn cloud_map_changes_build_what_a_full_build_builds() {
    check(vec![
        orders(80, &[("10.0.0.1", "v1")]),
        istio(RULE),
        orders(80, &[("10.0.0.1", "v1"), ("10.0.0.2", "v2")]),
        orders(8080, &[("10.0.0.2", "v2")]),
        // A hand-written entry takes the host; removed, the Cloud Map service has it again.
        istio(ENTRY),
        orders(8080, &[("10.0.0.3", "v2")]),
        delete(Kind::ServiceEntry, "cloud-map", "orders"),
        Event::Delete(RecordKey::CloudMap(NsName::new("example.local", "orders"))),
    ]);
}

#[test]
fn an_instance_change_rebuilds_load_assignments_alone() {
    let mut pipeline = Pipeline::new(options(), "cluster.local");
    pipeline.index.handle(orders(80, &[("10.0.0.1", "v1")]));
    pipeline.index.handle(istio(RULE));
    let cache = SnapshotCache::new();
    cache.replace(pipeline.full());
    let before = contents(&cache);

    let changes = pipeline
        .index
        .handle(orders(80, &[("10.0.0.1", "v1"), ("10.0.0.2", "v2")]));
    assert!(!changes.config(), "{changes:?}");
    assert_eq!(changes.cloud_map_endpoints.len(), 1);
    cache.apply(pipeline.update(&changes));
    let after = contents(&cache);

    let endpoint = type_index(type_url::ENDPOINT).expect("EDS");
    let changed: Vec<&(usize, String)> = after
        .iter()
        .filter(|(key, versions)| before.get(*key) != Some(*versions))
        .map(|(key, _)| key)
        .collect();
    assert!(!changed.is_empty(), "nothing was rebuilt");
    assert!(
        changed.iter().all(|(kind, _)| *kind == endpoint),
        "more than load assignments changed: {changed:?}"
    );
    assert!(
        changed
            .iter()
            .any(|(_, name)| name.contains("|v2|orders.example.local")),
        "the v2 subset's assignment: {changed:?}"
    );
}
