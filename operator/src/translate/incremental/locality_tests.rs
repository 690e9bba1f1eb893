//! Locality variants of clusters and load assignments, built incrementally: endpoints moving
//! between zones, policies turning locality preference on and off, and DNS clusters carrying
//! their own endpoints all end up exactly as a full build.

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_crds::Kind;
use capstan_xds::{Locality, ProxyInfo, SnapshotCache, type_index};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

use super::tests::{check, delete, istio, options, service};
use super::*;
use crate::index::{Event, Health, NodeRecord, NsName, Record, SliceEndpoint, SliceRecord};
use crate::reconcile::Pipeline;
use prost::Message;

fn node(name: &str, region: &str, zone: &str) -> Event {
    Event::Apply(Record::Node(NodeRecord {
        name: name.into(),
        region: region.into(),
        zone: zone.into(),
    }))
}

/// A slice of `reviews` with one endpoint per (address, node).
fn slice(endpoints: &[(&str, &str)]) -> Event {
    Event::Apply(Record::Slice(SliceRecord {
        id: NsName::new("bookinfo", "reviews-1"),
        service: "reviews".into(),
        ports: Arc::new(BTreeMap::from([("http".to_string(), 8080)])),
        endpoints: endpoints
            .iter()
            .map(|(address, node)| SliceEndpoint {
                address: (*address).into(),
                health: Health::Ready,
                pod: None,
                node: Some(node.to_string()),
                zone: None,
            })
            .collect(),
    }))
}

fn outlier_dr(extra: &str) -> Event {
    istio(&format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1}}
{extra}"
    ))
}

const DNS_SE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: bookinfo}
spec:
  hosts: [db.example.com]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: DNS
  endpoints:
  - {address: db-east.example.com, locality: us-east-1/us-east-1a}
  - {address: db-west.example.com, locality: us-west-2/us-west-2a}
";

const DNS_DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: bookinfo}
spec:
  host: db.example.com
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3}
    loadBalancer:
      localityLbSetting:
        failover: [{from: us-east-1, to: us-west-2}]
";

#[test]
fn locality_variants_follow_endpoints_and_policies() {
    check(vec![
        node("n-a", "us-east-1", "us-east-1a"),
        node("n-b", "us-east-1", "us-east-1b"),
        node("n-w", "us-west-2", "us-west-2a"),
        service("reviews", &[("http", 9080)]),
        slice(&[("10.0.0.1", "n-a"), ("10.0.0.2", "n-b")]),
        // Outlier detection turns locality failover on: a variant per zone.
        outlier_dr(""),
        // An endpoint in another region: variants for it and its region.
        slice(&[
            ("10.0.0.1", "n-a"),
            ("10.0.0.2", "n-b"),
            ("10.0.0.3", "n-w"),
        ]),
        // us-east-1b empties: its variant goes, the others change.
        slice(&[("10.0.0.1", "n-a"), ("10.0.0.3", "n-w")]),
        outlier_dr("    loadBalancer: {localityLbSetting: {enabled: false}}\n"),
        outlier_dr(
            "    loadBalancer:\n      localityLbSetting:\n        distribute:\n        \
             - {from: us-east-1/*, to: {us-west-2/*: 100}}\n",
        ),
        outlier_dr(
            "    loadBalancer:\n      localityLbSetting:\n        failoverPriority: \
             [topology.kubernetes.io/zone]\n        failover: [{from: us-east-1, to: us-west-2}]\n",
        ),
        delete(Kind::DestinationRule, "bookinfo", "reviews"),
        istio(DNS_SE),
        istio(DNS_DR),
        delete(Kind::DestinationRule, "bookinfo", "db"),
    ]);
}

fn proxy(locality: &str) -> ProxyInfo {
    ProxyInfo {
        locality: Locality::parse(locality),
        ..ProxyInfo::default()
    }
}

fn priorities(cla: &ClusterLoadAssignment) -> Vec<(String, u32)> {
    cla.endpoints
        .iter()
        .map(|g| {
            let zone = g
                .locality
                .as_ref()
                .map(|l| l.zone.clone())
                .unwrap_or_default();
            (zone, g.priority)
        })
        .collect()
}

#[test]
fn each_proxy_gets_the_variant_of_its_locality() {
    let mut pipeline = Pipeline::new(options(), "cluster.local");
    for event in [
        node("n-a", "us-east-1", "us-east-1a"),
        node("n-w", "us-west-2", "us-west-2a"),
        service("reviews", &[("http", 9080)]),
        slice(&[("10.0.0.1", "n-a"), ("10.0.0.3", "n-w")]),
        outlier_dr(""),
        istio(DNS_SE),
        istio(DNS_DR),
    ] {
        pipeline.index.handle(event);
    }
    let cache = SnapshotCache::new();
    cache.replace(pipeline.full());
    let state = cache.current();
    let eds = type_index(type_url::ENDPOINT).expect("EDS");
    let name = "outbound|9080||reviews.bookinfo.svc.cluster.local";
    let seen = |at: &str| {
        let resource = state
            .snapshot
            .resource_for(eds, name, &proxy(at))
            .expect("every proxy gets the assignment");
        priorities(&ClusterLoadAssignment::decode(resource.body()).expect("decodes"))
    };
    let east = vec![("us-east-1a".to_string(), 0), ("us-west-2a".to_string(), 1)];
    let west = vec![("us-east-1a".to_string(), 1), ("us-west-2a".to_string(), 0)];
    assert_eq!(seen("us-east-1/us-east-1a"), east);
    assert_eq!(seen("us-east-1/us-east-1c"), east, "the region's variant");
    assert_eq!(seen("us-west-2/us-west-2a"), west);
    assert_eq!(
        seen(""),
        vec![("us-east-1a".to_string(), 0), ("us-west-2a".to_string(), 0)]
    );

    // The DNS cluster carries its endpoints: one cluster per locality, weighed because of
    // the failover rule.
    let cds = type_index(type_url::CLUSTER).expect("CDS");
    let db = "outbound|5432||db.example.com";
    let cluster = |at: &str| {
        let resource = state
            .snapshot
            .resource_for(cds, db, &proxy(at))
            .expect("every proxy gets the cluster");
        envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(resource.body())
            .expect("decodes")
    };
    let east = cluster("us-east-1/us-east-1a");
    assert_eq!(
        priorities(east.load_assignment.as_ref().expect("inline endpoints")),
        vec![("us-east-1a".to_string(), 0), ("us-west-2a".to_string(), 1)]
    );
    assert!(
        east.common_lb_config
            .as_ref()
            .is_some_and(|c| c.locality_config_specifier.is_some()),
        "{east:?}"
    );
    let west = cluster("us-west-2/us-west-2a");
    assert_eq!(
        priorities(west.load_assignment.as_ref().expect("inline endpoints")),
        vec![("us-east-1a".to_string(), 1), ("us-west-2a".to_string(), 0)]
    );
}
