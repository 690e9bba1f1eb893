//! What one endpoint change costs in a mesh of 1,000 services and 10,000 endpoints, what
//! building that mesh costs, and what fanning a large route configuration out costs. Run with `cargo bench -p capstan-xds` (or `make bench`).

use std::cell::RefCell;
use std::hint::black_box;

use bytes::Bytes;
use capstan_xds::ads::delta::DeltaStream;
use capstan_xds::{Parts, Resource, SnapshotBuilder, SnapshotCache, Update, type_url};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use prost::Message;

const SERVICES: usize = 1_000;
const ENDPOINTS: usize = 10;

fn cluster(i: usize) -> Resource {
    let c = Cluster {
        name: format!("svc-{i}"),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        ..Default::default()
    };
    Resource::encode(c.name.clone(), &c).expect("served type")
}

fn load_assignment(i: usize, first_port: u32) -> Resource {
    let endpoints = (0..ENDPOINTS)
        .map(|j| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: format!("10.{}.{}.{}", (i / 256) % 256, i % 256, j % 256),
                        port_specifier: Some(PortSpecifier::PortValue(if j == 0 {
                            first_port
                        } else {
                            8080
                        })),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    let cla = ClusterLoadAssignment {
        cluster_name: format!("svc-{i}"),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: endpoints,
            ..Default::default()
        }],
        ..Default::default()
    };
    Resource::encode(cla.cluster_name.clone(), &cla).expect("served type")
}

fn full_mesh() -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new();
    for i in 0..SERVICES {
        b.add(cluster(i));
        b.add(load_assignment(i, 8080));
    }
    b
}

fn benches(c: &mut Criterion) {
    c.bench_function(
        "build mesh (1k services, 10k endpoints): encode + apply",
        |b| {
            b.iter(|| {
                let cache = SnapshotCache::new();
                black_box(cache.replace(full_mesh()))
            })
        },
    );

    let cache = SnapshotCache::new();
    cache.replace(full_mesh());
    let mut port = 9000u32;
    c.bench_function("one endpoint change: encode + apply (incremental)", |b| {
        b.iter(|| {
            port = port.wrapping_add(1);
            let mut update = Update::new();
            update.put(load_assignment(0, port));
            black_box(cache.apply(update))
        })
    });

    c.bench_function(
        "one endpoint change: full rebuild + diff (for comparison)",
        |b| {
            b.iter_batched(
                || {
                    port = port.wrapping_add(1);
                    let mut mesh = full_mesh();
                    mesh.add(load_assignment(0, port));
                    mesh
                },
                |mesh| black_box(cache.replace(mesh)),
                BatchSize::LargeInput,
            )
        },
    );

    // What one proxy's stream does for that change: a Delta stream subscribed to every
    // endpoint works out its response from the change history.
    let names: Vec<String> = (0..SERVICES).map(|i| format!("svc-{i}")).collect();
    // Setup (ACK + change) and the measured routine both drive the stream.
    let stream = RefCell::new(DeltaStream::new(cache.clone()));
    let subscribe = DeltaDiscoveryRequest {
        type_url: type_url::ENDPOINT.into(),
        resource_names_subscribe: names,
        ..Default::default()
    };
    let first = stream.borrow_mut().on_request(subscribe, &cache.current());
    let nonce = RefCell::new(first.first().map(|r| r.nonce.clone()).unwrap_or_default());
    c.bench_function("one endpoint change: one Delta stream's response", |b| {
        b.iter_batched(
            || {
                // ACK what was sent, then change one endpoint.
                let ack = DeltaDiscoveryRequest {
                    type_url: type_url::ENDPOINT.into(),
                    response_nonce: nonce.borrow().clone(),
                    ..Default::default()
                };
                stream.borrow_mut().on_request(ack, &cache.current());
                port = port.wrapping_add(1);
                let mut update = Update::new();
                update.put(load_assignment(0, port));
                cache.apply(update);
                cache.current()
            },
            |state| {
                let out = stream.borrow_mut().on_state(&state);
                if let Some(r) = out.first() {
                    *nonce.borrow_mut() = r.nonce.clone();
                }
                black_box(out)
            },
            BatchSize::SmallInput,
        )
    });
}

/// A route configuration of `SERVICES` virtual hosts kept in parts, as the translator keeps
/// one: each virtual host encoded on its own, in its own allocation.
fn route_in_parts() -> Parts {
    let pieces = (0..SERVICES).map(|i| {
        let one = RouteConfiguration {
            virtual_hosts: vec![VirtualHost {
                name: format!("svc-{i}.bench.svc.cluster.local:8080"),
                domains: (0..8).map(|d| format!("svc-{i}.alias-{d}")).collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        Parts::leaf(one.encode_to_vec())
    });
    Parts::join(pieces)
}

/// A route configuration change fanned out to `PROXIES` proxies: what each proxy's response
/// costs when it writes the resource's pieces itself (as every response did before) and when
/// it shares the one joined copy (`Resource::any_bytes`). The responses are held until all
/// are made, as in-flight responses are.
fn route_fan_out(c: &mut Criterion) {
    const PROXIES: usize = 1_000;
    let parts = route_in_parts();
    let route = Resource::from_parts(type_url::ROUTE, "8080", parts.clone());
    let mut group = c.benchmark_group("a 1,000-virtual-host route configuration to 1,000 proxies");
    group.bench_function("each response writes the pieces", |b| {
        b.iter(|| {
            let responses: Vec<Vec<u8>> = (0..PROXIES)
                .map(|_| {
                    let mut out = Vec::with_capacity(route.any_len());
                    route.write_any(&mut out);
                    out
                })
                .collect();
            black_box(responses)
        })
    });
    group.bench_function("every response shares one joined copy", |b| {
        b.iter(|| {
            // The resource anew each time, so that the first response joins it.
            let route = Resource::from_parts(type_url::ROUTE, "8080", parts.clone());
            let responses: Vec<Bytes> = (0..PROXIES).map(|_| route.any_bytes()).collect();
            black_box(responses)
        })
    });
    group.finish();
}

criterion_group!(name = fan_out; config = Criterion::default().sample_size(10); targets = route_fan_out);
criterion_group!(name = snapshot; config = Criterion::default().sample_size(20); targets = benches);
criterion_main!(snapshot, fan_out);
