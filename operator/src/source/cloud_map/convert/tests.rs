use super::*;
use crate::source::cloud_map::config::{PortSpec, ServiceOverride};

fn instance(id: &str, health: InstanceHealth, attributes: &[(&str, &str)]) -> Instance {
    Instance {
        id: id.into(),
        attributes: attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        health,
    }
}

fn view<'a>(instances: &'a [Instance], health_checked: bool) -> ServiceView<'a> {
    ServiceView {
        namespace: "example.local",
        name: "orders",
        health_checked,
        instances,
        last_port: None,
    }
}

#[test]
fn instances_become_endpoints_with_labels_locality_and_port() {
    let config = CloudMapConfig::default();
    let instances = [
        instance(
            "i-1",
            InstanceHealth::Healthy,
            &[
                (IPV4, "10.0.0.2"),
                (PORT, "8080"),
                ("version", "v2"),
                ("protocol", "HTTP"),
                (REGION, "us-east-1"),
                (ZONE, "us-east-1b"),
            ],
        ),
        instance(
            "i-2",
            InstanceHealth::Healthy,
            &[(IPV4, "10.0.0.1"), (PORT, "8080"), ("version", "v1")],
        ),
    ];
    let (record, skipped) = record(&config, &view(&instances, false));
    let record = record.expect("served");
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(record.host, "orders.example.local");
    assert_eq!(record.namespace, "cloud-map");
    assert_eq!(record.ports.len(), 1);
    assert_eq!(record.ports[0].name, "http-8080");
    assert_eq!(record.ports[0].port, 8080);
    assert_eq!(record.ports[0].protocol, Some(Protocol::Http));
    let addresses: Vec<&str> = record.endpoints.iter().map(|e| &*e.address).collect();
    assert_eq!(addresses, ["10.0.0.1", "10.0.0.2"]);
    let second = &record.endpoints[1];
    assert_eq!(second.labels.get("version").map(String::as_str), Some("v2"));
    assert!(!second.labels.contains_key(IPV4));
    assert_eq!(second.locality, "us-east-1/us-east-1b");
    assert_eq!(second.ports.get("http-8080"), Some(&8080));
}

#[test]
fn health_decides_who_serves() {
    let instances = [
        instance(
            "a",
            InstanceHealth::Healthy,
            &[(IPV4, "10.0.0.1"), (PORT, "80")],
        ),
        instance(
            "b",
            InstanceHealth::Unhealthy,
            &[(IPV4, "10.0.0.2"), (PORT, "80")],
        ),
        instance(
            "c",
            InstanceHealth::Unknown,
            &[(IPV4, "10.0.0.3"), (PORT, "80")],
        ),
    ];
    let served = |config: &CloudMapConfig, checked: bool| -> Vec<String> {
        let (record, _) = record(config, &view(&instances, checked));
        let record = record.expect("served");
        record
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect()
    };
    let mut config = CloudMapConfig::default();
    // With a health check only HEALTHY serves; without, UNKNOWN does too unless configured.
    assert_eq!(served(&config, true), ["10.0.0.1"]);
    assert_eq!(served(&config, false), ["10.0.0.1", "10.0.0.3"]);
    config.include_unknown_health = false;
    assert_eq!(served(&config, false), ["10.0.0.1"]);
}

#[test]
fn the_port_map_wins_and_names_the_protocol() {
    let mut config = CloudMapConfig::default();
    config.services.push(ServiceOverride {
        namespace: "example.local".into(),
        name: "orders".into(),
        ports: vec![PortSpec {
            name: "grpc-api".into(),
            number: 9000,
            protocol: None,
            target_port: 0,
        }],
    });
    let instances = [instance(
        "a",
        InstanceHealth::Healthy,
        &[(IPV4, "10.0.0.1"), (PORT, "7000")],
    )];
    let (record, _) = record(&config, &view(&instances, false));
    let record = record.expect("served");
    assert_eq!(record.ports[0].port, 9000);
    assert_eq!(record.ports[0].protocol, Some(Protocol::Grpc));
    // The instance's own port is where traffic for the service port goes.
    assert_eq!(record.endpoints[0].ports.get("grpc-api"), Some(&7000));
}

#[test]
fn without_ports_or_addresses_it_says_why() {
    let config = CloudMapConfig::default();
    let no_port = [instance(
        "a",
        InstanceHealth::Healthy,
        &[(IPV4, "10.0.0.1")],
    )];
    let (record_, _) = record(&config, &view(&no_port, false));
    assert!(record_.expect_err("no port").contains(PORT));
    // The port it had is kept when its last instance goes.
    let mut empty = view(&[], false);
    empty.last_port = Some(5432);
    let (kept, _) = record(&config, &empty);
    let kept = kept.expect("served");
    assert_eq!(kept.ports[0].port, 5432);
    assert_eq!(kept.ports[0].protocol, Some(Protocol::Tcp));
    assert!(kept.endpoints.is_empty());

    let odd = [
        instance(
            "bad-ip",
            InstanceHealth::Healthy,
            &[(IPV4, "10.0.0"), (PORT, "80")],
        ),
        instance(
            "bad-label",
            InstanceHealth::Healthy,
            &[(IPV4, "10.0.0.9"), (PORT, "80"), ("team name", "x")],
        ),
    ];
    let (record_, skipped) = record(&config, &view(&odd, false));
    let record_ = record_.expect("served");
    assert_eq!(record_.endpoints.len(), 1);
    assert!(record_.endpoints[0].labels.is_empty());
    let which: Vec<&str> = skipped
        .iter()
        .filter_map(|s| s.instance.as_deref())
        .collect();
    assert_eq!(which, ["bad-ip", "bad-label"]);
}

#[test]
fn cname_instances_make_a_dns_service() {
    let config = CloudMapConfig::default();
    let instances = [instance(
        "db",
        InstanceHealth::Unknown,
        &[
            (CNAME, "db.abc.us-east-1.rds.amazonaws.com"),
            (PORT, "5432"),
        ],
    )];
    let (record, _) = record(&config, &view(&instances, false));
    let record = record.expect("served");
    assert!(record.dns);
    assert_eq!(
        &*record.endpoints[0].address,
        "db.abc.us-east-1.rds.amazonaws.com"
    );
}

#[test]
fn a_host_that_is_not_a_dns_name_is_refused() {
    let config = CloudMapConfig::default();
    let mut v = view(&[], false);
    v.name = "orders_v2";
    v.last_port = Some(80);
    let (record, _) = record(&config, &v);
    assert!(record.expect_err("bad host").contains("hostTemplate"));
}

#[test]
fn instances_sharing_an_address_keep_their_ports_and_the_service_port_stays() {
    let config = CloudMapConfig::default();
    let instances = [
        instance(
            "a",
            InstanceHealth::Healthy,
            &[(IPV4, "10.0.0.1"), (PORT, "9000")],
        ),
        instance(
            "b",
            InstanceHealth::Healthy,
            &[(IPV4, "10.0.0.1"), (PORT, "8000")],
        ),
    ];
    let mut v = view(&instances, false);
    v.last_port = Some(9000);
    let (record, _) = record(&config, &v);
    let record = record.expect("served");
    assert_eq!(record.endpoints.len(), 2);
    // 8000 would win a tie, but 9000 is the port it was served on and is still in use.
    assert_eq!(record.ports[0].port, 9000);
    let ports: Vec<u32> = record
        .endpoints
        .iter()
        .filter_map(|e| e.ports.values().next().copied())
        .collect();
    assert_eq!(ports, [8000, 9000]);
}
