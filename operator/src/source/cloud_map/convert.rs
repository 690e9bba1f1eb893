//! Cloud Map instances → a [`CloudMapService`] record: the host from the template, ports
//! from the port map or `AWS_INSTANCE_PORT`, the serving instances as endpoints with their
//! custom attributes as labels and `REGION`/`AVAILABILITY_ZONE` as locality.

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_crds::Protocol;
use capstan_crds::validate::names;

use super::config::CloudMapConfig;
use crate::index::{CloudMapEndpoint, CloudMapService, KubeServicePort, NsName};

pub const IPV4: &str = "AWS_INSTANCE_IPV4";
pub const PORT: &str = "AWS_INSTANCE_PORT";
pub const CNAME: &str = "AWS_INSTANCE_CNAME";
pub const REGION: &str = "REGION";
pub const ZONE: &str = "AVAILABILITY_ZONE";

/// An instance's health as Cloud Map reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceHealth {
    Healthy,
    Unhealthy,
    Unknown,
}

impl InstanceHealth {
    pub fn parse(text: &str) -> Self {
        match text {
            "HEALTHY" => InstanceHealth::Healthy,
            "UNHEALTHY" => InstanceHealth::Unhealthy,
            _ => InstanceHealth::Unknown,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub attributes: BTreeMap<String, String>,
    pub health: InstanceHealth,
}

/// One Cloud Map service as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// It has a Route 53 or custom health check: only HEALTHY instances serve.
    pub health_checked: bool,
    pub instances: &'a [Instance],
    /// The port it was served on before, for when no instance says one now.
    pub last_port: Option<u32>,
}

/// What of a service could not be used: logged by the poller, once per change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub instance: Option<String>,
    pub message: String,
}

/// The record of `view`, or why the whole service cannot be served; and what was skipped.
pub fn record(
    config: &CloudMapConfig,
    view: &ServiceView<'_>,
) -> (Result<CloudMapService, String>, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let host = config.host(view.namespace, view.name);
    if let Err(e) = names::service_host(&host) {
        return (Err(format!("its host from hostTemplate: {e}")), skipped);
    }
    let ports = match ports(config, view) {
        Some(ports) => ports,
        None => {
            return (
                Err(format!(
                    "no port: no instance has {PORT} and services[] gives none for it"
                )),
                skipped,
            );
        }
    };
    let first = ports[0].name.clone();
    let mut endpoints = Vec::new();
    let mut dns = None;
    for instance in view.instances {
        let serving = match instance.health {
            InstanceHealth::Healthy => true,
            InstanceHealth::Unhealthy => false,
            InstanceHealth::Unknown => !view.health_checked && config.include_unknown_health,
        };
        if !serving {
            continue;
        }
        let (address, is_name) = match (
            instance.attributes.get(IPV4),
            instance.attributes.get(CNAME),
        ) {
            (Some(ip), _) if ip.parse::<std::net::Ipv4Addr>().is_ok() => (ip, false),
            (None, Some(name)) if names::service_host(name).is_ok() => (name, true),
            _ => {
                skipped.push(Skipped {
                    instance: Some(instance.id.clone()),
                    message: format!("no valid {IPV4} (or {CNAME}): not an endpoint"),
                });
                continue;
            }
        };
        // One resolution per service: the first instance's kind decides.
        if *dns.get_or_insert(is_name) != is_name {
            skipped.push(Skipped {
                instance: Some(instance.id.clone()),
                message: "mixes addresses and DNS names with the other instances: not an endpoint"
                    .into(),
            });
            continue;
        }
        let mut port_map = BTreeMap::new();
        if let Some(port) = instance_port(instance) {
            port_map.insert(first.clone(), port);
        }
        endpoints.push(CloudMapEndpoint {
            address: address.as_str().into(),
            ports: Arc::new(port_map),
            labels: Arc::new(labels(instance, &mut skipped)),
            locality: locality(&instance.attributes),
        });
    }
    // Instances may share an address (ECS bridge mode: one host, a port each); the same
    // address and port registered twice is one endpoint.
    endpoints.sort_by(|a, b| a.address.cmp(&b.address).then(a.ports.cmp(&b.ports)));
    endpoints.dedup_by(|later, first| later.address == first.address && later.ports == first.ports);
    let record = CloudMapService {
        id: NsName::new(view.namespace, view.name),
        host,
        namespace: config.mesh_namespace.clone(),
        ports,
        dns: dns.unwrap_or(false),
        endpoints,
    };
    (Ok(record), skipped)
}

fn instance_port(instance: &Instance) -> Option<u32> {
    instance
        .attributes
        .get(PORT)
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|p| (1..=65535).contains(p))
}

/// The service's ports: the configured map, else one port on the most common
/// `AWS_INSTANCE_PORT` (the last one known when no instance says), its protocol from the
/// protocol attribute (TCP when none: a Cloud Map service is as often a database as HTTP).
fn ports(config: &CloudMapConfig, view: &ServiceView<'_>) -> Option<Vec<KubeServicePort>> {
    if let Some(specs) = config.ports_of(view.namespace, view.name) {
        return Some(
            specs
                .iter()
                .map(|p| KubeServicePort {
                    name: p.name.clone(),
                    port: p.number,
                    protocol: p
                        .protocol
                        .as_deref()
                        .and_then(Protocol::parse)
                        .or_else(|| Protocol::from_port_name(&p.name)),
                    target_port: p.target_port,
                })
                .collect(),
        );
    }
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for instance in view.instances {
        if let Some(port) = instance_port(instance) {
            *counts.entry(port).or_default() += 1;
        }
    }
    // The port it had while an instance still uses it (a service port that moved would
    // rename its clusters); else the most common, the lowest among equals.
    let port = view
        .last_port
        .filter(|p| counts.contains_key(p) || counts.is_empty())
        .or_else(|| {
            counts
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(port, _)| *port)
        })?;
    let protocol = view
        .instances
        .iter()
        .find_map(|i| i.attributes.get(&config.protocol_attribute))
        .and_then(|p| Protocol::parse(p))
        .unwrap_or(Protocol::Tcp);
    Some(vec![KubeServicePort {
        name: format!("{}-{port}", protocol.name().to_ascii_lowercase()),
        port,
        protocol: Some(protocol),
        target_port: 0,
    }])
}

/// Custom attributes that are valid Kubernetes labels (the `AWS_` ones are Cloud Map's own).
fn labels(instance: &Instance, skipped: &mut Vec<Skipped>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (key, value) in &instance.attributes {
        if key.starts_with("AWS_") {
            continue;
        }
        match names::label(key, value) {
            Ok(()) => {
                out.insert(key.clone(), value.clone());
            }
            Err(e) => skipped.push(Skipped {
                instance: Some(instance.id.clone()),
                message: format!("attribute not a label: {e}"),
            }),
        }
    }
    out
}

/// `region/zone` from the attributes ECS and most registrations set.
fn locality(attributes: &BTreeMap<String, String>) -> String {
    match (attributes.get(REGION), attributes.get(ZONE)) {
        (Some(region), Some(zone)) => format!("{region}/{zone}"),
        (Some(region), None) => region.clone(),
        // A zone's name starts with its region's (`us-east-1a`).
        (None, Some(zone)) => {
            let region = zone.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            format!("{region}/{zone}")
        }
        (None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests;
